"""The HTTP edge: the FastAPI app, routes, response schemas, middleware, auth and the web pages.

``uvicorn service.api.app:create_app --factory`` serves it. Everything FastAPI or Starlette lives
here; the rest of ``service`` is the core that workers share, and workers never import this package.
"""
