"""PruneSearch's HTTP service: settings, job tables and queries, REST routes.

The package root imports nothing heavy: the worker imports ``service.repository`` and
``service.broker`` without pulling in FastAPI's app, and nothing here imports torch.
"""
