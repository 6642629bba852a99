"""Makes a process look like the slim API image: only docker/requirements-api.txt's packages exist.

Put this folder first on PYTHONPATH and set PRUNESEARCH_TEST_API_REQUIREMENTS to that file.
Python imports ``sitecustomize`` at start-up, before the program: from then on, importing a
module of any other installed distribution (torch, transformers, optuna, numpy, pygments, ...)
raises ImportError, as it would in the image, where they are not installed. At exit the names
of the top-level modules the program imported are written to ``$PRUNESEARCH_TEST_IMPORT_LOG``
(every second, and at exit).
"""

import atexit
import importlib.abc
import os
import sys
import threading
import time
from pathlib import Path

from api_image_rules import closure, foreign_modules, normalize, read_requirements

_ALLOWED = closure(read_requirements(Path(os.environ["PRUNESEARCH_TEST_API_REQUIREMENTS"]))) | {
    normalize("prunesearch")
}
_ABSENT = frozenset(foreign_modules(_ALLOWED))
# The rules needed `packaging`, which the image may not have: forget it, so the program cannot
# lean on it by accident (a later import goes through the check like any other).
for _name in [name for name in sys.modules if name.partition(".")[0] in {"packaging", "api_image_rules"}]:
    del sys.modules[_name]


class _NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        top = fullname.partition(".")[0]
        if top in _ABSENT and top not in sys.modules:
            raise ModuleNotFoundError(f"No module named {top!r} (not in docker/requirements-api.txt)", name=top)
        return None


sys.meta_path.insert(0, _NotInTheImage())
_AT_START = frozenset(name.partition(".")[0] for name in sys.modules)


def _write_import_log() -> None:
    path = os.environ.get("PRUNESEARCH_TEST_IMPORT_LOG")
    if path:
        names = sorted({name.partition(".")[0] for name in list(sys.modules)} - _AT_START)
        Path(path).write_text("\n".join(names) + "\n", encoding="utf-8")


def _keep_writing() -> None:
    # Every second as well as at exit: uvicorn ends by re-raising SIGTERM, which skips atexit.
    while True:
        _write_import_log()
        time.sleep(1)


atexit.register(_write_import_log)
threading.Thread(target=_keep_writing, name="import-log", daemon=True).start()
