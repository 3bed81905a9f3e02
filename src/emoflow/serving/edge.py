"""The HTTP edge of the predictor: what every request meets before KServe's app.

- ``ResponseMetrics`` (outermost ASGI middleware): every response is counted in
  ``emoflow_http_responses_total{route, code_class}`` — route is the matched route template
  (``/v2/models/{model_name}/infer``) or ``other``, code_class ``2xx``..``5xx`` — including
  KServe-level 400s, 404, 405, 413, 422, 500 and this module's own 408/413/503. A request whose
  app ends without a response counts as 5xx (uvicorn answers it 500).
- ``RequestGuard``: a request with a body gets 413 when it declares (or streams) more than the body
  limit, 503 with ``Retry-After`` when its body would not fit the memory budget now
  (emoflow.serving.admission), and 408 when the body has not arrived ``body_timeout_s`` after the
  headers; all three close the connection. The body is read here, then replayed to the app.
- ``header_deadline_protocol``: uvicorn's HTTP protocol (httptools or h11, as uvicorn picks) with a
  deadline for a request's headers (408 and close): uvicorn itself waits forever for the rest of
  a header, so a slow client could hold a connection open indefinitely.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.routing import Match

from emoflow.serving.admission import BODY_COPIES, Hold, MemoryBudget, Overloaded, TooLarge
from emoflow.serving.oip import error_response, send_response

log = logging.getLogger("emoflow.serving")

try:
    from prometheus_client import Counter

    HTTP_RESPONSES = Counter("emoflow_http_responses_total", "HTTP responses by route template and status class",
                             ["route", "code_class"])
except ValueError:  # module imported twice under two names: record nothing
    HTTP_RESPONSES = None

OTHER = "other"
BODY_METHODS = {"POST", "PUT", "PATCH"}


def count_response(route: str, status: int) -> None:
    if HTTP_RESPONSES is not None:
        HTTP_RESPONSES.labels(route, f"{min(max(status // 100, 1), 5)}xx").inc()


def _flat_routes(container, prefix: str = ""):
    """(include prefix, route) of every route, through included routers (FastAPI includes them
    lazily, as wrappers holding the original router)."""
    for route in getattr(container, "routes", ()):
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _flat_routes(inner, prefix + (getattr(context, "prefix", "") or ""))
        else:
            yield prefix, route


def route_template(scope) -> str:
    """The template of the app route `scope` matches (a method mismatch counts: it is the 405's
    route), else ``other``: unmatched paths never become label values."""
    matched = scope.get("route")  # set by the router when it matched on this very scope
    if getattr(matched, "path", None):
        return matched.path
    partial = None
    for prefix, route in _flat_routes(getattr(scope.get("app"), "router", None)):
        probe = scope
        if prefix:
            if not scope["path"].startswith(prefix):
                continue
            probe = {**scope, "path": scope["path"][len(prefix):]}
        try:
            match, _ = route.matches(probe)
        except Exception:  # noqa: BLE001 (a route that cannot judge this scope does not match it)
            continue
        path = prefix + getattr(route, "path", "")
        if match is Match.FULL:
            return path
        if match is Match.PARTIAL and partial is None:
            partial = path
    return partial or OTHER


class ResponseMetrics:
    """Outermost ASGI middleware: counts every HTTP response by route template and status class."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = None

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            count_response(route_template(scope), status if status is not None else 500)


class RequestGuard:
    """ASGI middleware for requests with a body: size limit (413), memory budget (503 +
    Retry-After) and body deadline (408); each of them closes the connection."""

    def __init__(self, app, limit: int, budget: MemoryBudget | None = None, body_timeout_s: float = 0.0,
                 hint: str = ""):
        self.app = app
        self.limit = limit
        self.budget = budget
        self.body_timeout_s = body_timeout_s
        self.hint = hint

    async def _reply(self, send, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        await send_response(send, error_response(status, message, {"connection": "close", **(extra or {})}))

    def _too_large(self, size: int | None) -> str:
        got = f"{size} bytes" if size is not None else f"more than {self.limit} bytes"
        return f"request body is {got}, the limit is {self.limit} bytes{self.hint}"

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        has_body = b"content-length" in headers or b"transfer-encoding" in headers
        if scope["type"] != "http" or not (has_body or scope["method"] in BODY_METHODS):
            return await self.app(scope, receive, send)
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None
        if declared is not None and self.limit > 0 and declared > self.limit:
            return await self._reply(send, 413, self._too_large(declared))
        hold = Hold(self.budget) if self.budget is not None else None
        try:
            if hold is not None:
                expected = declared if declared is not None else self.limit
                hold.reserve(BODY_COPIES * expected, f"a request body of {expected} bytes", "body")
        except TooLarge as exc:
            return await self._reply(send, 413, str(exc))
        except Overloaded as exc:
            return await self._reply(send, 503, str(exc), {"retry-after": str(exc.retry_after_s)})
        try:
            body = await self._read(receive, send)
            if body is None:
                return
            replay = [{"type": "http.request", "body": body, "more_body": False}]

            async def replay_receive():
                return replay.pop() if replay else await receive()

            await self.app(scope, replay_receive, send)
        finally:
            if hold is not None:
                hold.release()

    async def _read(self, receive, send) -> bytes | None:
        """The whole body, or None when this middleware answered (413, 408) or the client left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s if self.body_timeout_s > 0 else None
        chunks, total = [], 0
        while True:
            try:
                if deadline is None:
                    message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.warning("request body not complete after %g s (%d bytes arrived): 408", self.body_timeout_s, total)
                await self._reply(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                                             f"({total} bytes arrived)")
                return None
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return None
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if self.limit > 0 and total > self.limit:
                await self._reply(send, 413, self._too_large(None))
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)


_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s")


def header_deadline_protocol(base: type, timeout_s: float) -> type:
    """`base` (a uvicorn HTTP protocol class) with a deadline of `timeout_s` for each request's
    headers, from the connection's start or the first byte of the next request."""

    class HeaderDeadlineProtocol(base):
        _header_timer = None
        _armed_cycle = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._armed_cycle:
                self._disarm()  # headers complete: a new request cycle started

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._armed_cycle = self.cycle
            self._header_timer = self.loop.call_later(timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.cycle is not self._armed_cycle:
                return
            body = error_response(408, f"the request headers did not arrive within {timeout_s:g} s").body
            self.transport.write(_TIMEOUT_408 % (len(body), body))
            self.transport.close()
            count_response(OTHER, 408)

    HeaderDeadlineProtocol.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadlineProtocol
