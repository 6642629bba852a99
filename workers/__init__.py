"""Celery glue: the only place where the job tables, the broker and the search library meet."""
