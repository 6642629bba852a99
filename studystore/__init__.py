"""The Optuna storage of PruneSearch's studies: RDB storage with heartbeats, a running trial's writes
batched into one transaction, SQLite tuned for several workers.

Apart from ``search/`` because it is SQL (Optuna's own tables, through SQLAlchemy): the search
library takes a storage as an argument and never builds one."""

from studystore.storage import BatchedRDBStorage, make_storage

__all__ = ["BatchedRDBStorage", "make_storage"]
