"""Requests and responses of the predictor's two protocols, for audio and text-only models.

Requests:
- V1 ``POST /v1/models/<name>:predict`` with ``{"instances": [{"audio": <base64 WAV/FLAC/MP3>,
  "text": "optional", "speaker": "optional"}]}``;
- Open Inference Protocol v2 ``POST /v2/models/<name>/infer`` with BYTES inputs ``audio``
  (base64 strings, or the raw file bytes through the binary tensor extension) and optional
  ``text`` and ``speaker``.

Text-only models (no audio input, e.g. the A1 ``meld-text`` presets) take ``{"text": "...",
"speaker": "optional"}`` instances (v2: BYTES input ``text`` required, ``speaker`` optional); the
text must be non-empty and ``audio`` is refused (a 400 naming the instance: the model cannot use
it).

Every client mistake raises BadRequest (a KServe InvalidInput: 400) naming the bad item, never
quoting the payload.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from emoflow.serving.model import Instance
from emoflow.serving.settings import ServingConfig

MAX_MESSAGE_CHARS = 1000   # error messages are short: they name the problem, never carry the payload
_HEAP_ADDRESS = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")


def client_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` fit for a client or a log line: object reprs with heap addresses replaced, capped."""
    text = _HEAP_ADDRESS.sub("<upload>", str(text))
    return text if len(text) <= limit else text[:limit - 15] + "... (truncated)"


_WHITESPACE = str.maketrans("", "", " \t\r\n")
_URL_SAFE = str.maketrans("-_", "+/")
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not, with or without MIME line breaks; ValueError
    saying what is wrong (never quoting more than the offending character)."""
    compact = text.translate(_WHITESPACE)
    if "-" in compact or "_" in compact:
        if "+" in compact or "/" in compact:
            raise ValueError("it mixes the standard (+/) and URL-safe (-_) alphabets")
        compact = compact.translate(_URL_SAFE)
    body = compact.rstrip("=")
    if len(compact) - len(body) > 2:
        raise ValueError("more than two '=' padding characters")
    bad = next((i for i, c in enumerate(body) if c not in _ALPHABET), None)
    if bad is not None:
        char = body[bad]
        shown = repr(char) if char.isprintable() and char.isascii() else f"U+{ord(char):04X}"
        raise ValueError(f"character {shown} at position {bad} is not in the base64 alphabet")
    if len(body) % 4 == 1:
        raise ValueError(f"{len(body)} base64 characters cannot encode whole bytes (truncated?)")
    return base64.b64decode(body + "=" * (-len(body) % 4))


def shown(value: Any, limit: int = 32) -> str:
    """A client-given name or value fit for a message: its repr when short, else its length only."""
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= limit and text.isprintable() else f"<{len(str(value))} characters>"


class BadRequest(InvalidInput):
    """A client error (HTTP 400); `reason` is the metrics label, the message names the bad item."""

    def __init__(self, reason: str, message: str):
        super().__init__(client_message(message))
        self.kind = reason


class RequestParser:
    """Instances (not yet decoded) from V1 bodies and v2 InferRequests, within the limits."""

    def __init__(self, config: ServingConfig, *, text_only: bool = False, model_inputs=(), outputs=()):
        self.config = config
        self.text_only = text_only
        self.model_inputs = sorted(model_inputs)
        self.outputs = list(outputs)   # v2 output names a request may ask for

    def parse(self, payload: Any) -> tuple[list[Instance], bool]:
        """Instances from a V1 dict or a v2 InferRequest; the flag says v2."""
        if isinstance(payload, InferRequest):
            self._check_outputs(payload)
        if self.text_only:
            return self._parse_text_only(payload)
        if isinstance(payload, InferRequest):
            inputs = self._v2_inputs(payload)
            if "audio" not in inputs:
                raise BadRequest("missing_audio", "v2 request: input 'audio' (BYTES) is required")
            columns, n = self._v2_columns(inputs, "audio", {"audio", "text", "speaker"})
            texts, speakers = columns.get("text") or [None] * n, columns.get("speaker") or [None] * n
            return [self._instance(columns["audio"][i], texts[i] or None, speakers[i] or None, f"inputs[audio][{i}]")
                    for i in range(n)], True
        insts = []
        for i, inst in enumerate(self._v1_instances(payload, "missing_audio")):
            if not isinstance(inst, dict):
                raise BadRequest("wrong_type", f"instances[{i}] must be an object with 'audio' and optional 'text'")
            if "audio" not in inst:
                raise BadRequest("missing_audio", f"instances[{i}]: 'audio' is required")
            self._no_unknown_fields(inst, {"audio", "text", "speaker"}, f"instances[{i}]")
            insts.append(self._instance(inst["audio"], inst.get("text"), inst.get("speaker"), f"instances[{i}]"))
        return insts, False

    def _parse_text_only(self, payload: Any) -> tuple[list[Instance], bool]:
        """parse() for text-only models: V1 ``{"text", "speaker"}`` instances, v2 BYTES ``text``
        (required) and ``speaker``; audio is refused, not ignored."""
        if isinstance(payload, InferRequest):
            inputs = self._v2_inputs(payload)
            if "audio" in inputs:
                raise self._no_audio("v2 input 'audio'")
            if "text" not in inputs:
                raise BadRequest("missing_text", "v2 request: input 'text' (BYTES) is required (this model takes text only)")
            columns, n = self._v2_columns(inputs, "text", {"text", "speaker"})
            speakers = columns.get("speaker") or [None] * n
            return [self._text_instance(columns["text"][i], speakers[i] or None, f"inputs[text][{i}]")
                    for i in range(n)], True
        insts = []
        for i, inst in enumerate(self._v1_instances(payload, "missing_text")):
            where = f"instances[{i}]"
            if not isinstance(inst, dict):
                raise BadRequest("wrong_type", f"{where} must be an object with 'text' and optional 'speaker'")
            if "audio" in inst:
                raise self._no_audio(where)
            self._no_unknown_fields(inst, {"text", "speaker"}, where)
            insts.append(self._text_instance(inst.get("text"), inst.get("speaker"), where))
        return insts, False

    # -- fields ----------------------------------------------------------------------------------
    @staticmethod
    def _no_unknown_fields(inst: dict, allowed: set[str], where: str) -> None:
        unknown = sorted(shown(k) for k in set(inst) - allowed)
        if unknown:
            raise BadRequest("wrong_type", f"{where}: unknown fields {', '.join(unknown[:10])} "
                                           f"(allowed: {', '.join(sorted(allowed))})")

    def _audio_bytes(self, value: Any, where: str) -> bytes:
        limit = self.config.max_request_bytes
        if isinstance(value, (bytes, bytearray)):  # v2 binary tensor extension: the file itself
            raw = bytes(value)
            try:  # ... or its base64 text, sent as binary
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return raw
        if not isinstance(value, str):
            raise BadRequest("wrong_type", f"{where}: 'audio' must be a base64 string, got {type(value).__name__}")
        if not value:
            raise BadRequest("empty", f"{where}: 'audio' is empty")
        if len(value) > limit * 4 // 3 + limit // 28 + 8:  # base64 with MIME line breaks (CRLF every 76)
            raise BadRequest("too_large", f"{where}: audio is larger than the limit of {limit} bytes")
        try:
            return decode_base64(value)
        except ValueError as exc:
            raise BadRequest("bad_base64", f"{where}: 'audio' is not valid base64 ({exc})") from None

    @staticmethod
    def _text(value: Any, field_name: str, limit: int, where: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest("wrong_type", f"{where}: {field_name!r} is not valid UTF-8 (byte {exc.start})") from None
        if not isinstance(value, str):
            raise BadRequest("wrong_type", f"{where}: {field_name!r} must be a string, got {type(value).__name__}")
        if len(value) > limit:
            raise BadRequest("too_large", f"{where}: {field_name!r} is longer than {limit} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("wrong_type", f"{where}: {field_name!r} is not valid unicode (lone surrogate)") from None
        return value

    def _instance(self, audio: Any, text: Any, speaker: Any, where: str) -> Instance:
        text = self._text(text, "text", self.config.max_text_chars, where)
        speaker = self._text(speaker, "speaker", self.config.max_speaker_chars, where)
        data = self._audio_bytes(audio, where)
        if not data:
            raise BadRequest("empty", f"{where}: 'audio' decodes to zero bytes")
        if len(data) > self.config.max_request_bytes:
            raise BadRequest("too_large", f"{where}: audio is {len(data)} bytes, the limit is "
                                          f"{self.config.max_request_bytes}")
        return Instance(audio=data, text=text if text and text.strip() else None, speaker=speaker, where=where)

    def _text_instance(self, text: Any, speaker: Any, where: str) -> Instance:
        """An instance of a text-only model: non-empty text, optional speaker, no audio."""
        text = self._text(text, "text", self.config.max_text_chars, where)
        speaker = self._text(speaker, "speaker", self.config.max_speaker_chars, where)
        if text is None or not text.strip():
            raise BadRequest("missing_text", f"{where}: 'text' is required and must not be empty "
                                             f"(this model takes text only)")
        return Instance(audio=b"", text=text, speaker=speaker, where=where, mode="text-only")

    def _no_audio(self, where: str) -> BadRequest:
        return BadRequest("unexpected_audio", f"{where}: 'audio' is not accepted: this model takes text only "
                                              f"(inputs {self.model_inputs}) and cannot use audio; send 'text'")

    # -- request shapes --------------------------------------------------------------------------
    def _check_count(self, n: int, what: str) -> None:
        if n > self.config.max_instances:
            raise BadRequest("too_large", f"{what}: {n} instances, the limit is {self.config.max_instances} per request")

    def _v1_instances(self, payload: Any, missing_reason: str) -> list:
        """The V1 body's ``instances`` list (non-empty, within the limit); `missing_reason` names
        what an empty request lacks (audio, or text for text-only models)."""
        if not isinstance(payload, dict):
            raise BadRequest("wrong_type", f"request body must be a JSON object, got {type(payload).__name__}")
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise BadRequest(missing_reason, "V1 request: 'instances' must be a non-empty list")
        self._check_count(len(instances), "V1 request")
        return instances

    def _check_outputs(self, payload: InferRequest) -> None:
        """Requested outputs must exist; ``binary_data`` / ``binary_data_output`` must be booleans."""
        flag = (payload.parameters or {}).get("binary_data_output", False)
        if not isinstance(flag, bool):
            raise BadRequest("wrong_type", f"v2 request: parameter 'binary_data_output' must be a boolean, "
                                           f"got {type(flag).__name__}")
        for i, out in enumerate(payload.request_outputs or []):
            if out.name not in self.outputs:
                raise BadRequest("unknown_output", f"v2 request: outputs[{i}] {shown(out.name)} is not an "
                                                   f"output of this model (outputs: {self.outputs})")
            params = out.parameters if out.parameters is not None else {}
            if not isinstance(params, dict) or not isinstance(params.get("binary_data", False), bool):
                raise BadRequest("wrong_type", f"v2 request: outputs[{i}] parameter 'binary_data' must be a boolean")

    @staticmethod
    def _v2_inputs(payload: InferRequest) -> dict:
        names = [inp.name for inp in payload.inputs]
        if len(set(names)) != len(names):
            raise BadRequest("wrong_type", f"v2 request: duplicate input names "
                                           f"{', '.join(sorted({shown(n) for n in names if names.count(n) > 1}))}")
        return {inp.name: inp for inp in payload.inputs}

    def _v2_columns(self, inputs: dict, main: str, allowed: set[str]) -> tuple[dict[str, list], int]:
        """Each input's values; all as many as the `main` input's (at least one, within the limit)."""
        unknown = sorted(set(inputs) - allowed)
        if unknown:
            raise BadRequest("wrong_type", f"v2 request: unknown inputs {', '.join(shown(u) for u in unknown[:10])} "
                                           f"(allowed: {', '.join(sorted(allowed))})")
        columns = {name: self._v2_values(inp) for name, inp in inputs.items()}
        n = len(columns[main])
        for name, vals in columns.items():
            if len(vals) != n:
                raise BadRequest("wrong_type", f"v2 input {name!r} has {len(vals)} values, {main!r} has {n}")
        if n == 0:
            raise BadRequest("empty", f"v2 request: {main!r} has no values")
        self._check_count(n, "v2 request")
        return columns, n

    @staticmethod
    def _v2_values(inp: Any) -> list:
        name = inp.name
        if inp.datatype != "BYTES":
            raise BadRequest("wrong_type", f"v2 input {shown(name)}: datatype must be BYTES, got {shown(inp.datatype)}")
        try:
            values = inp.data
        except Exception as exc:  # noqa: BLE001 (KServe converts binary data lazily)
            raise BadRequest("wrong_type", f"v2 input {name!r}: unreadable data ({type(exc).__name__})") from None
        if isinstance(values, np.ndarray):
            values = values.tolist()
        if not isinstance(values, list):
            values = [values]
        shape = inp.shape
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                            for d in shape):
            raise BadRequest("wrong_type", f"v2 input {name!r}: shape must be a list of non-negative integers, "
                                           f"got {shown(shape, 60)}")
        if any(isinstance(v, list) for v in values):  # nested (row-major) form, [rows, columns]
            rows_ok = all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1
            if not rows_ok or len(shape) != 2 or shape[0] != len(values):
                raise BadRequest("wrong_type", f"v2 input {name!r}: nested data must be {len(values)} rows of equal "
                                               f"length with a 2-d shape, got shape {list(shape)[:8]}")
            values = [x for row in values for x in row]
        declared = math.prod(shape) if shape else len(values)
        if declared != len(values):
            raise BadRequest("wrong_type", f"v2 input {name!r}: shape {list(shape)[:8]} does not match "
                                           f"{len(values)} values")
        for i, v in enumerate(values):
            if not isinstance(v, (str, bytes, bytearray)):
                raise BadRequest("wrong_type", f"v2 input {name!r}[{i}]: BYTES values must be strings, "
                                               f"got {type(v).__name__}")
        return values
