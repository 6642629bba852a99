"""Conditional GETs for polled resources: a strong ``ETag`` from the stored version, ``If-None-Match``
answered 304 without a body, and rendered bodies kept per version so an unchanged poll is not rendered
again.

The version is ``service.repository.JobStamp`` (small columns, read with the ownership check), never the
body: deciding a 304 or finding the cached body costs no JSON decoding, validation or encoding. A body
must be a pure function of what its tag names (job id, stamp, the request's page parameters), which
``service.api.schemas`` keeps true (no clock in a poll's body).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

__all__ = ["RenderedBodies", "conditional_response", "make_etag", "none_match"]

# Polls are not for shared caches (they need the caller's key) and must be revalidated every time.
CACHE_CONTROL = "private, no-cache"
# Bump when a poll's representation changes shape, so no client keeps a tag of the old one.
REPRESENTATION = "1"


def make_etag(*parts: object) -> str:
    """A strong entity tag for the representation that ``parts`` identify."""
    digest = hashlib.sha256(repr((REPRESENTATION, *parts)).encode()).hexdigest()[:32]
    return f'"{digest}"'


def none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match: header`` names ``etag`` (RFC 9110 §13.1.2: ``*``, a list, weak tags
    compared weakly), i.e. whether the client's copy is current and the answer is 304."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(candidate.strip().removeprefix("W/") == etag for candidate in header.split(","))


class RenderedBodies:
    """Rendered bodies by key (path, version, page), least recently used dropped beyond ``max_bytes``.

    Per process and thread-safe (sync routes run in the thread pool). A key includes the stored
    version, so an entry is never stale: a changed job has a new key, and its old entry ages out.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, key: tuple[object, ...], body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            previous = self._bodies.pop(key, None)
            if previous is not None:
                self._size -= len(previous)
            self._bodies[key] = body
            self._size += len(body)
            while self._size > self.max_bytes:
                _, dropped = self._bodies.popitem(last=False)
                self._size -= len(dropped)


async def conditional_response(
    key: tuple[object, ...], if_none_match: str | None, bodies: RenderedBodies, render: Callable[[], bytes]
) -> Response:
    """304 if the client has the version ``key`` names, else its JSON body, rendered once per version.

    Called from ``async`` routes: a 304 or a body already rendered is answered in the event loop,
    without the thread-pool hop a ``def`` route costs; ``render`` (which reads the database) runs
    in the thread pool.
    """
    etag = make_etag(*key)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if none_match(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    body = bodies.get(key)
    if body is None:
        body = await run_in_threadpool(render)
        bodies.put(key, body)
    return Response(body, media_type="application/json", headers=headers)
