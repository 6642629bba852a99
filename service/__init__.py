"""PruneSearch's service: the shared core (settings, job tables and queries, broker, admission) and,
in ``service.api``, the HTTP edge (FastAPI app, routes, schemas, middleware, web pages).

The core imports no FastAPI or Starlette, so workers use it without the web stack; nothing here
imports torch.
"""
