"""Small HTTP helpers shared by the processor's receiver and the dashboard (no heavy imports)."""

from __future__ import annotations

import hmac
from typing import Any


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured, or the header is `Bearer <token>` (constant-time)."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def read_limited(request: Any, limit: int) -> bytes | None:
    """A Starlette request's body, or None as soon as it is known to be over `limit` bytes.

    A declared `Content-Length` over the limit is refused before anything is read; a body
    without one (chunked) is read only up to the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
