"""Request-level limits: a body-size limit enforced before anything parses the request, and a
thread pool that cannot starve the database pool. Each refusal is a problem+json naming the setting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response
from service.errors import RequestTooLarge
from service.settings import Settings

__all__ = ["BodySizeLimit", "install_limits"]


class BodySizeLimit:
    """ASGI middleware: a body over ``max_bytes`` is answered 413 before any of it is parsed.

    A declared ``Content-Length`` over the limit is refused without reading the body; a chunked
    body is counted as it arrives. The accepted body is buffered (it is at most ``max_bytes``,
    and every route reads it whole anyway) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away; nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # waits for the disconnect, as the server's own receive would

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more than that"
        error = RequestTooLarge(
            f"the request body is {size}; this server accepts at most {self.max_bytes} bytes (max_body_bytes)"
        )
        response = problem_response(
            Request(scope),
            status=error.status,
            title=error.title,
            detail=error.detail,
            type_slug=error.type,
            # The unread rest of the body makes the connection unusable for another request.
            headers={"Connection": "close"},
        )
        await response(scope, _nothing_to_receive, send)


async def _nothing_to_receive() -> Message:
    return {"type": "http.disconnect"}


def install_limits(app: FastAPI, settings: Settings) -> None:
    """The body-size limit, and a thread pool that cannot starve the database pool.

    FastAPI runs each ``def`` route and dependency in one shared thread pool (40 threads by
    default) and validates a ``def`` route's response there too, while the request's session still
    holds its connection. With more concurrent requests than threads, every thread can be waiting
    for a connection that only a request waiting for a thread would return: a deadlock until the
    pool times out. (Found by benchmarks/load.py: 200 pollers, every request timed out.) With more
    threads than concurrent requests, a request waiting for a thread always gets one.
    """
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        async with inner(asgi_app) as state:
            yield state

    app.router.lifespan_context = lifespan


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length before we see it
    return None
