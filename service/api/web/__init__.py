"""The web status page: server-rendered HTML shells, small vanilla JS modules, an inline SVG plot.

Every asset is served by the API itself (self-hosted installs are often offline). The pages read
the public JSON API from the browser, with the user's API key when one is set, so they show
exactly what the API would; the shells themselves carry no job data.
"""

from __future__ import annotations

from service.api.web.router import install_web, router

__all__ = ["install_web", "router"]
