"""The REST layer of the Open Inference Protocol (v2) and of error answers, over KServe's server.

What KServe 0.21's REST server does not do and this layer adds (``OIPRESTServer``, a RESTServer
whose endpoints, middleware and error handlers come from here; ``OIPDataPlane``):

- v2 ``infer``, model metadata and model ready answer on the versioned routes
  ``/v2/models/<name>/versions/<v>/...`` for the version the responses name (another version:
  404); KServe answers those with NotImplementedError.
- Model metadata declares the model's real inputs and outputs (datatypes, shapes with -1), its
  platform and ``versions`` as a list; server metadata lists the ``binary_tensor_data`` extension.
- A v2 request with the binary tensor extension (header ``Inference-Header-Content-Length``) keeps
  BYTES elements as bytes (raw audio files are not UTF-8); KServe's decoder insists on UTF-8 and
  echoes the whole element in its error. Requested ``outputs`` and their ``binary_data``
  parameters (default: the request's ``binary_data_output``) are honoured; empty parameters are
  left out, never ``null``.
- A JSON body is JSON whatever its Content-Type says (curl's form type, a charset, capitals, none)
  unless the binary extension header is present. ``Content-Encoding: gzip``/``deflate`` bodies are
  decompressed up to the body limit (413 beyond it); other encodings get 415 naming them.
- Errors are ``{"error": message}`` bodies of at most MAX_ERROR_BYTES, for 400/404/405/422/5xx
  alike, and never quote the request; client errors (4xx) log one capped line and no traceback.
  An unhandled exception becomes a complete 500 answer inside the app, so the keep-alive
  connection stays usable (Starlette's own 500 path re-raises and uvicorn drops the connection).
"""

from __future__ import annotations

import json
import logging
import traceback
import zlib
from typing import Any, Mapping

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from kserve.errors import (InferenceError, InvalidInput, ModelNotFound, ModelNotReady, ServerNotLive,
                           ServerNotReady, UnsupportedProtocol)
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.rest.server import RESTServer
from starlette.exceptions import HTTPException as StarletteHTTPException

from emoflow.serving.protocol import client_message
from emoflow.serving.responses import v2_rest

log = logging.getLogger("emoflow.serving")

MAX_ERROR_BYTES = 4096
BINARY_HEADER = "inference-header-content-length"
EXTENSIONS = ["model_repository_extension", "binary_tensor_data"]
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error": message}``, the message sanitised and capped so the body stays under MAX_ERROR_BYTES."""
    body = json.dumps({"error": client_message(message)}).encode()
    if len(body) > MAX_ERROR_BYTES:
        body = json.dumps({"error": client_message(message, MAX_ERROR_BYTES // 8)}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))


def log_server_error(where: str, exc: BaseException) -> None:
    """A server fault: its message capped, and the frames of its traceback (not the message again)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))[-8000:]
    log.error("%s: %s\n%s", where, client_message(f"{type(exc).__name__}: {exc}"), frames)


# -- requests -----------------------------------------------------------------------------------------
def _validation_summary(errors: list[dict], limit: int = 5) -> str:
    """Pydantic/FastAPI validation errors as 'where: what', without the offending input."""
    parts = []
    for e in errors[:limit]:
        loc = ".".join(str(x) if len(str(x)) <= 32 else f"<{len(str(x))} characters>"
                       for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def _bytes_elements(raw: memoryview, name: str) -> list[bytes]:
    """BYTES elements of the binary tensor extension: 4-byte little-endian length, then the bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InvalidInput(f"v2 input {name!r}: binary data ends inside an element's 4-byte length")
        n = int.from_bytes(raw[i:i + 4], "little")
        if i + 4 + n > len(raw):
            raise InvalidInput(f"v2 input {name!r}: binary element {len(out)} declares {n} bytes, "
                               f"{len(raw) - i - 4} are left")
        out.append(bytes(raw[i + 4:i + 4 + n]))
        i += 4 + n
    return out


def decode_v2_request(body: bytes, headers: Mapping[str, str], model_name: str) -> InferRequest:
    """An InferRequest from a v2 REST body: JSON, or JSON header + binary tensors when the
    ``Inference-Header-Content-Length`` header is present. Raises InvalidInput naming the problem."""
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    length = headers.get(BINARY_HEADER)
    tail = memoryview(b"")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise InvalidInput(f"header {BINARY_HEADER} must be an integer, got {length[:20]!r}") from None
        if not 0 < n <= len(body):
            raise InvalidInput(f"header {BINARY_HEADER} is {n}, outside the {len(body)}-byte body")
        body, tail = body[:n], memoryview(body)[n:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc})") from None
    raw: dict[int, memoryview] = {}
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
        offset = 0
        for i, inp in enumerate(doc["inputs"]):
            size = ((inp.get("parameters") or {}).get("binary_data_size") if isinstance(inp, dict)
                    and isinstance(inp.get("parameters") or {}, dict) else None)
            if size is None or "data" in inp:
                continue
            if length is None:
                raise InvalidInput(f"inputs[{i}] has binary_data_size but the request has no {BINARY_HEADER} header")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(tail):
                raise InvalidInput(f"inputs[{i}]: binary_data_size {str(size)[:20]} does not fit the "
                                   f"{len(tail) - offset} binary bytes left")
            raw[i], offset = tail[offset:offset + size], offset + size
            inp["data"] = []  # validated below; filled from the binary part
        if offset != len(tail):
            raise InvalidInput(f"{len(tail) - offset} bytes after the last binary input")
    try:
        req = InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput(f"v2 request: {_validation_summary(exc.errors())}") from None
    inputs = []
    for i, inp in enumerate(req.inputs):
        data: Any = inp.data
        if i in raw:
            data = _bytes_elements(raw[i], inp.name) if inp.datatype == "BYTES" else bytes(raw[i])
        inputs.append(InferInput(name=inp.name, shape=inp.shape, datatype=inp.datatype, data=data,
                                 parameters=inp.parameters or {}))
    outputs = [RequestedOutput(name=o.name, parameters=o.parameters or {}) for o in req.outputs] if req.outputs else None
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=req.id,
                        parameters=req.parameters or {}, request_outputs=outputs)


# -- data plane -------------------------------------------------------------------------------------
class OIPDataPlane(DataPlane):
    def metadata(self) -> dict:
        return {**super().metadata(), "extensions": list(EXTENSIONS)}

    async def model_metadata(self, model_name: str) -> dict:
        model = self.get_model_from_registry(model_name)
        if not model.ready:  # its inputs, outputs and version are known once it is loaded
            raise ModelNotReady(model_name)
        describe = getattr(model, "metadata", None)
        return describe() if callable(describe) else await super().model_metadata(model_name)


def _served_version(dataplane: DataPlane, model_name: str, version: str | None) -> None:
    """404 unless `version` (from a versioned route) is the version the model serves."""
    if version is None:
        return
    model = dataplane.get_model_from_registry(model_name)
    if not model.ready:  # the version is known once it is loaded
        raise ModelNotReady(model_name)
    served = str(getattr(model, "version", ""))
    if version != served:
        raise ModelNotFound(f"{model_name} version {version[:40]} (this server serves version {served})")


def _json(content: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), media_type="application/json", headers=dict(headers or {}))


def oip_router(dataplane: DataPlane) -> APIRouter:
    """v2 routes answered here rather than by KServe (registered first, so they win)."""
    router = APIRouter(prefix="/v2")

    async def server_metadata() -> Response:
        return _json(dataplane.metadata())

    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        _served_version(dataplane, model_name, model_version)
        return _json(await dataplane.model_metadata(model_name))

    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        _served_version(dataplane, model_name, model_version)
        if not await dataplane.model_ready(model_name):
            raise ModelNotReady(model_name)
        return _json({"name": model_name, "ready": True})

    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        _served_version(dataplane, model_name, model_version)
        if not await dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        headers = {k.lower(): v for k, v in request.headers.items()}
        infer_request = decode_v2_request(await request.body(), headers, model_name)
        response, response_headers = await dataplane.infer(model_name=model_name, request=infer_request,
                                                           headers=headers)
        binary = bool((infer_request.parameters or {}).get("binary_data_output", False))
        content, json_length = v2_rest(response, infer_request.request_outputs, binary)
        if json_length is None:
            return _json(content)
        return Response(content, media_type="application/octet-stream",
                        headers={"inference-header-content-length": str(json_length)})

    router.add_api_route("", server_metadata, methods=["GET"])
    for prefix in ("/models/{model_name}", "/models/{model_name}/versions/{model_version}"):
        router.add_api_route(prefix, model_metadata, methods=["GET"])
        router.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        router.add_api_route(prefix + "/infer", infer, methods=["POST"])
    return router


# -- errors ---------------------------------------------------------------------------------------------
def _handler(status: int, client: bool):
    async def handle(request: Request, exc: Exception) -> Response:
        message = str(exc)
        if client:  # the client's mistake: one capped line, no traceback
            log.warning("%s %s: %d %s", request.method, request.url.path, status, client_message(message, 300))
        else:
            log_server_error(f"{request.method} {request.url.path}: {status}", exc)
        return error_response(status, message)
    return handle


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    message = f"invalid request: {_validation_summary(list(exc.errors()))}"
    log.warning("%s %s: 422 %s", request.method, request.url.path, client_message(message, 300))
    return error_response(422, message)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path[:200]}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path[:200]}"
    return error_response(exc.status_code, message, exc.headers)


def add_exception_handlers(app: FastAPI) -> None:
    """Replace KServe's handlers (tracebacks for 400s, unbounded messages) with bounded ones."""
    for exc_type, status, client in ((InvalidInput, 400, True), (ModelNotFound, 404, True),
                                     (ModelNotReady, 503, False), (ServerNotReady, 503, False),
                                     (ServerNotLive, 503, False), (InferenceError, 500, False),
                                     (UnsupportedProtocol, 501, False), (NotImplementedError, 501, False)):
        app.add_exception_handler(exc_type, _handler(status, client))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


# -- middleware -----------------------------------------------------------------------------------------
class ProtocolMiddleware:
    """Innermost ASGI middleware: JSON content type unless binary, bounded body decompression,
    and unhandled exceptions answered as complete 500s (the connection stays usable)."""

    def __init__(self, app, limit: int = 0):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if scope["method"] == "POST":
                scope, receive = await self._normalise(scope, receive, tracking_send)
                if scope is None:
                    return
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 (a server fault: answer it, keep the connection)
            log_server_error(f"{scope.get('method')} {scope.get('path')}: 500", exc)
            if started:
                raise
            await send_response(send, error_response(500, f"internal server error ({type(exc).__name__}); "
                                                  f"see the server log"))

    async def _normalise(self, scope, receive, send):
        headers = [(k, v) for k, v in scope["headers"]]
        names = {k.lower() for k, _ in headers}
        if BINARY_HEADER.encode() in names and not scope["path"].endswith("/infer"):
            await send_response(send, error_response(400, f"the binary tensor extension ({BINARY_HEADER}) is for v2 "
                                                  f"/infer only; V1 requests are JSON"))
            return None, None
        if BINARY_HEADER.encode() not in names:  # a JSON body whatever the Content-Type says
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        encoding = next((v for k, v in headers if k.lower() == b"content-encoding"), b"").decode("latin-1")
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
        if not codings:
            return {**scope, "headers": headers}, receive
        unknown = [c for c in codings if c not in ENCODINGS]
        if unknown:
            await send_response(send, error_response(415, f"Content-Encoding {unknown[0][:40]!r} is not supported; send the "
                                                  f"body uncompressed, gzip or deflate"))
            return None, None
        body = await _read_body(receive)
        try:
            for coding in reversed(codings):
                body = _inflate(body, ENCODINGS[coding], self.limit)
        except OverflowError:
            await send_response(send, error_response(413, f"request body decompresses to more than the limit of "
                                                  f"{self.limit} bytes"))
            return None, None
        except zlib.error as exc:
            await send_response(send, error_response(400, f"request body is not valid {codings[0]} data ({exc})"))
            return None, None
        headers = [(k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return {**scope, "headers": headers}, replay_receive


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """Decompress at most `limit` bytes (0: no limit); OverflowError beyond it."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit + 1 if limit > 0 else 0)
    if (limit > 0 and len(out) > limit) or d.unconsumed_tail:
        raise OverflowError
    out += d.flush()
    if not d.eof:
        raise zlib.error("the compressed stream is truncated")
    return out


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_response(send, response: Response) -> None:
    """Send a prepared Response through a raw ASGI ``send`` (from a middleware)."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


class OIPRESTServer(RESTServer):
    """KServe's RESTServer with this module's routes first, its error handlers, and the protocol
    middleware innermost. `body_limit` (set by subclasses) bounds decompressed bodies."""

    body_limit: int = 0

    def _register_endpoints(self, app: FastAPI) -> None:
        app.include_router(oip_router(self.dataplane))
        super()._register_endpoints(app)

    def _add_exception_handlers(self, app: FastAPI) -> None:
        super()._add_exception_handlers(app)
        add_exception_handlers(app)

    def _add_middlewares(self, app: FastAPI) -> None:
        app.add_middleware(ProtocolMiddleware, limit=self.body_limit)  # first added: innermost
        super()._add_middlewares(app)
