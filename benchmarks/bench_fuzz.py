"""R2: fuzz the predictor with malformed requests over real HTTP; every answer must be a 4xx.

Request kinds (seeded, V1 and v2): random bytes as the body, JSON of the wrong shape, random
bytes / truncated / header-corrupted WAV and FLAC as base64 audio (huge declared sample rates,
frame counts and channel counts), bad base64, wrong datatypes, huge or negative declared v2
shapes, nested and mismatched v2 data, unicode (emoji, RTL, zero-width, NUL, lone surrogates) in
text, too many instances, deep JSON nesting, the v2 binary extension with lying sizes. After the
run the server must still be ready and still answer a valid request with 200.

Resource cases (``resource_cases``, issue 15 items 1 and 7), each with server RSS before, peak and
after, readiness and a one-clip request meanwhile: 64 x 29.9 s OGG in one 2.9 MB request, and four
of them at once (refused from the headers: over the per-request audio total); 10 x 29.9 s (within
it) alone and four at once (admission control: some 503 + Retry-After); loud float audio; 16
connections stalled mid-headers and 16 mid-body (408 and closed). R2 also holds the server's RSS
after the whole run within 10 % of before it.

Protocol cases (``protocol_cases``, issue 15 items 2, 3, 5, 6), each with the statuses it may get:
raw WAV through the binary extension, payload-echo probes (a marker in every field; the answer
must not contain it and must be at most 4 KB), loud float audio in a batch with a good clip,
Content-Types (curl's form type, charsets, capitals, none), gzip/deflate bodies, a gzip bomb,
unknown encodings, base64 in MIME/URL-safe/unpadded form, requested outputs, versioned routes,
404/405 error objects. Reported per kind: statuses, largest body, 5xx count.

    python benchmarks/bench_fuzz.py [--requests 1200] [--seed 0] [--concurrency 4] [--url URL]

Without --url a tiny A1 model (random init) is registered in a temporary store and served by
``start_local_server`` on 127.0.0.1. Exit code 1 on any 5xx, transport error or lost readiness.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EMOFLOW_HOME", str(REPO / ".emoflow"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

# audio corruptions a decoder may legitimately repair (a wrong RIFF size, a flipped bit in FLAC
# frames): for these a 200 is fine too; everything else must be a 4xx, and nothing a 5xx
MAY_DECODE = ("corrupt_wav", "flac_bitflip")
V1 = "/v1/models/emoflow:predict"
V2 = "/v2/models/emoflow/infer"
JSON = {"content-type": "application/json"}
UNICODE = ["😀🎉", "مرحبا بالعالم", "\u200b\u200d\ufeff", "a\x00b", "\ud800", "\udfff lone", "ℌ𝔢𝔩𝔩𝔬",
           "\u202eevil", "ä" * 3000, "\n\t\r", "𝕏" * 50, "\U0010ffff", ""]


def _audio(seconds: float = 0.5, sr: int = 16000, fmt: str = "WAV", seed: int = 0) -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    wave = (0.1 * rng.normal(size=int(seconds * sr))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _corrupt_wav(rng: random.Random, wav: bytes) -> bytes:
    """A WAV whose header lies: huge rate, frames, channels, block align, data size, or truncated."""
    b = bytearray(wav)
    kind = rng.randrange(8)
    if kind == 0:
        struct.pack_into("<I", b, 24, rng.choice([0, 1, 7, 4_000_000_000, 2**31 - 1, 96000 * 64]))  # sample rate
    elif kind == 1:
        struct.pack_into("<H", b, 22, rng.choice([0, 3, 255, 65535]))  # channels
    elif kind == 2:
        struct.pack_into("<I", b, 40, rng.choice([0, 2**32 - 1, 2**31, 10**9]))  # data chunk size
    elif kind == 3:
        struct.pack_into("<H", b, 34, rng.choice([0, 1, 7, 64, 65535]))  # bits per sample
    elif kind == 4:
        struct.pack_into("<H", b, 20, rng.choice([0, 2, 17, 0xFFFE, 65535]))  # format tag
    elif kind == 5:
        return bytes(b[: rng.randrange(0, len(b))])  # truncated anywhere (header included)
    elif kind == 6:
        struct.pack_into("<I", b, 4, rng.choice([0, 2**32 - 1]))  # RIFF size
    else:
        for _ in range(rng.randrange(1, 40)):  # random bit flips in the header
            i = rng.randrange(0, 44)
            b[i] = rng.randrange(256)
    return bytes(b)


def make_cases(n: int, seed: int = 0) -> list[tuple[str, str, bytes, dict]]:
    """`n` malformed requests: (name, path, body, headers), deterministic for a seed."""
    rng = random.Random(seed)
    wav = _audio()
    flac = _audio(fmt="FLAC")
    good = _b64(wav)

    def rbytes(lo=0, hi=4000) -> bytes:
        return rng.randbytes(rng.randrange(lo, hi))

    def bad_audio() -> tuple[str, object]:
        k = rng.randrange(12)
        if k == 0:
            return "random_bytes_b64", _b64(rbytes(1, 20000))
        if k == 1:
            return "corrupt_wav", _b64(_corrupt_wav(rng, wav))
        if k == 2:
            return "truncated_flac", _b64(flac[: rng.randrange(0, len(flac) // 2)])
        if k == 3:
            return "bad_base64", rng.choice(["%%%", "abc", "====", "a" * 5, "YWJj\n!", "\u00e9\u00e9", good[:-3] + "*"])
        if k == 4:
            return "wrong_type_audio", rng.choice([None, 1, 1.5, True, [], {}, [good], {"b64": good}, -1])
        if k == 5:
            return "empty_audio", ""
        if k == 6:
            return "silence_too_short", _b64(_audio(seconds=rng.choice([0.0005, 0.01, 0.05])))
        if k == 7:
            return "too_long", _b64(_audio(seconds=rng.choice([31, 40]), sr=8000))
        if k == 8:
            return "text_as_audio", _b64(rng.choice(UNICODE[:4]).encode("utf-8", "surrogatepass") * 50)
        if k == 9:
            return "riff_header_only", _b64(wav[:44])
        if k == 10:
            return "nan_wav", _b64(_nan_wav())
        return "flac_bitflip", _b64(bytes(x if rng.random() > 0.02 else rng.randrange(256) for x in flac[:4000]))

    def bad_text() -> object:
        return rng.choice([rng.choice(UNICODE), 7, 1.5, [], {"t": 1}, True, "x" * 5000, "🙂" * 2500])

    def dumps(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")

    cases = []
    for i in range(n):
        k = rng.randrange(22)
        if k == 0:
            cases.append(("v1_random_body", V1, rbytes(0, 5000), JSON))
        elif k == 1:
            cases.append(("v2_random_body", V2, rbytes(0, 5000), JSON))
        elif k == 2:
            body = rng.choice([[], [1, 2], "str", 3, None, {"instance": []}, {"instances": {}},
                               {"instances": "abc"}, {"instances": [1, 2]}, {"instances": [[good]]},
                               {"instances": [None]}, {"inputs": []}])
            cases.append(("v1_wrong_shape", V1, dumps(body), JSON))
        elif k in (3, 4, 5, 6):
            name, audio = bad_audio()
            inst = {"audio": audio}
            if rng.random() < 0.5:
                inst["text"] = rng.choice(UNICODE)
            cases.append((f"v1_{name}", V1, dumps({"instances": [inst]}), JSON))
        elif k == 7:
            inst = {"audio": good, "text": bad_text()}
            if isinstance(inst["text"], str) and len(inst["text"]) <= 2000 and "\ud800" not in inst["text"] \
                    and "\udfff" not in inst["text"]:
                inst["speaker"] = rng.choice([1, [], {"a": 1}, "s" * 500])  # keep it malformed
            cases.append(("v1_bad_text", V1, dumps({"instances": [inst]}), JSON))
        elif k == 8:
            inst = {"audio": good, rng.choice(["colour", "", "audio ", "AUDIO", "\u00e9"]): 1}
            cases.append(("v1_unknown_field", V1, dumps({"instances": [inst]}), JSON))
        elif k == 9:
            cases.append(("v1_too_many_instances", V1, dumps({"instances": [{"audio": "AAAA"}] * rng.choice([65, 500])}), JSON))
        elif k == 10:
            depth = rng.choice([100, 1000, 5000])
            cases.append(("deep_nesting", rng.choice([V1, V2]), b"[" * depth + b"]" * depth, JSON))
        elif k in (11, 12):
            name, audio = bad_audio()
            inp = {"name": "audio", "shape": [1], "datatype": "BYTES", "data": [audio]}
            cases.append((f"v2_{name}", V2, dumps({"inputs": [inp]}), JSON))
        elif k == 13:
            shape = rng.choice([[10**12], [-1], [2**63], [2**64 + 5], ["a"], [1.5], [[1]], None, "1", [0], [1, 0],
                                [10**6, 10**6], [1, 2, 3], [-5, -2]])
            inp = {"name": "audio", "shape": shape, "datatype": "BYTES", "data": [good]}
            cases.append(("v2_huge_or_bad_shape", V2, dumps({"inputs": [inp]}), JSON))
        elif k == 14:
            dt = rng.choice(["FP32", "INT64", "BOOL", "UINT8", "FP16", "STRING", "", None, 5])
            data = rng.choice([[1.0], [1], [True], [good], [[1, 2]], "abc"])
            inp = {"name": "audio", "shape": [1], "datatype": dt, "data": data}
            cases.append(("v2_wrong_datatype", V2, dumps({"inputs": [inp]}), JSON))
        elif k == 15:
            data = rng.choice([[[good], [good, good]], [[good]], [good, [good]], [1, 2], [None], [{}], [[]], []])
            inp = {"name": "audio", "shape": [rng.choice([1, 2, 3])], "datatype": "BYTES", "data": data}
            cases.append(("v2_nested_or_mismatched", V2, dumps({"inputs": [inp]}), JSON))
        elif k == 16:
            text = bad_text()
            inputs = [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [good]},
                      {"name": "text", "shape": [1], "datatype": rng.choice(["BYTES", "FP32"]), "data": [text]}]
            if not (isinstance(text, str) and len(text) <= 2000 and "\ud800" not in text and "\udfff" not in text):
                cases.append(("v2_bad_text", V2, dumps({"inputs": inputs}), JSON))
            else:  # valid text: make the request wrong elsewhere (text length differs from audio)
                inputs[1]["data"], inputs[1]["shape"] = [text, text], [2]
                cases.append(("v2_text_count_mismatch", V2, dumps({"inputs": inputs}), JSON))
        elif k == 17:
            body = rng.choice([{}, {"inputs": None}, {"inputs": {}}, {"inputs": [1]}, {"inputs": [{}]},
                               {"inputs": [{"name": "audio"}]}, {"inputs": [{"name": "audio", "shape": [1]}]},
                               {"inputs": [{"name": 5, "shape": [1], "datatype": "BYTES", "data": [good]}]},
                               {"id": 7, "inputs": []},
                               {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [good]}] * 2},
                               {"inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "data": [good]}]},
                               {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [good]}],
                                "parameters": "x"},
                               {"instances": [{"audio": good}]}])
            cases.append(("v2_wrong_json_shape", V2, dumps(body), JSON))
        elif k == 18:  # v2 binary extension with a lying header length
            header = dumps({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES",
                                        "parameters": {"binary_data_size": rng.choice([0, 4, 10**9, -5])}}]})
            body = header + rbytes(0, 2000)
            hlen = rng.choice([len(header), 0, 3, len(body) + 100, -1, 10**12, "abc"])
            cases.append(("v2_binary_extension", V2, body,
                          {"content-type": "application/octet-stream", "inference-header-content-length": str(hlen)}))
        elif k == 19:
            ct = rng.choice(["text/plain", "application/xml", "multipart/form-data", "", "application/json; charset=latin-1"])
            cases.append(("wrong_content_type", rng.choice([V1, V2]), rbytes(0, 300) or b"{", {"content-type": ct}))
        elif k == 20:
            body = '{"instances": [{"audio": "%s", "text": "\\ud800\\udbff \\ud83d"}]}' % good
            cases.append(("v1_json_lone_surrogates", V1, body.encode(), JSON))
        else:
            blob = rbytes(1, 3000)
            body = rng.choice([b'{"instances": [{"audio": "' + blob + b'"}]}',
                               b'{"instances": [{"audio": "AAAA", "text": "' + blob + b'"}]}',
                               b'{"instances": [' + blob, json.dumps({"instances": [{"audio": good}]}).encode()[:rng.randrange(1, 200)]])
            cases.append(("invalid_json_bytes", rng.choice([V1, V2]), body, JSON))
    return cases


def _nan_wav() -> bytes:
    """0.5 s of NaN as a 32-bit float WAV, written by hand: libsndfile adds a PEAK chunk with a
    timestamp, which made the fuzz cases differ from one second to the next."""
    data = np.full(8000, np.nan, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)  # IEEE float, mono, 16 kHz
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


ECHO_MARKER = "ECHO-PROBE-"
MAX_ERROR_BODY = 4096


def _loud_wav(amplitude: float = 1e18) -> bytes:
    """0.5 s of a float WAV at an absurd amplitude (its features overflow to NaN)."""
    data = (amplitude * np.sin(np.arange(8000) / 8.0)).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _binary_v2(raw: bytes) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw) + 4}}]}).encode()
    return header + struct.pack("<I", len(raw)) + raw, {"inference-header-content-length": str(len(header)),
                                                        "content-type": "application/octet-stream"}


def protocol_cases() -> list[tuple[str, str, str, bytes, dict, set]]:
    """(kind, method, path, body, headers, allowed statuses) for the protocol defects of issue 15."""
    import gzip
    import zlib

    wav = _audio(1.0)
    good = _b64(wav)
    v1 = lambda *insts: json.dumps({"instances": list(insts)}).encode()  # noqa: E731
    v2 = lambda data, **kw: json.dumps({"inputs": [{"name": "audio", "shape": [len(data)], "datatype": "BYTES",  # noqa: E731
                                                    "data": data}], **kw}).encode()
    blob = (ECHO_MARKER + "x" * 1000) * 250
    noise = (ECHO_MARKER.encode() + bytes(range(256)) * 4) * 250
    ok, bad = {200}, {400}
    cases = [
        ("binary_raw_wav", "POST", V2, *_binary_v2(_audio(2.0)), ok),
        ("binary_not_audio_echo", "POST", V2, *_binary_v2(noise), bad),
        ("v1_not_audio_echo", "POST", V1, v1({"audio": _b64(noise)}), JSON, bad),
        ("v2_bad_structure_echo", "POST", V2, json.dumps({"inputs": [{"name": "audio", "shape": blob}]}).encode(), JSON, bad),
        ("v1_unknown_field_echo", "POST", V1, v1({"audio": good, blob: 1}), JSON, bad),
        ("v2_invalid_json_echo", "POST", V2, ('{"inputs": [' + blob).encode(), JSON, bad),
        ("loud_float_wav_in_batch", "POST", V1, v1({"audio": good}, {"audio": _b64(_loud_wav())}), JSON, bad),
        ("loud_float_wav_v2", "POST", V2, v2([good, _b64(_loud_wav())]), JSON, bad),
        ("unknown_requested_output", "POST", V2, v2([good], outputs=[{"name": "colour"}]), JSON, bad),
        ("requested_outputs_binary", "POST", V2, v2([good], outputs=[{"name": "probabilities",
                                                                    "parameters": {"binary_data": True}}]), JSON, ok),
        ("versioned_infer", "POST", "/v2/models/emoflow/versions/v1/infer", v2([good]), JSON, ok),
        ("other_version_infer", "POST", "/v2/models/emoflow/versions/v999/infer", v2([good]), JSON, {404}),
        ("model_metadata", "GET", "/v2/models/emoflow", b"", {}, ok),
        ("versioned_metadata", "GET", "/v2/models/emoflow/versions/v1", b"", {}, ok),
        ("unknown_route", "GET", "/v2/models/emoflow/nowhere", b"", {}, {404}),
        ("wrong_method", "DELETE", V2, b"", {}, {405}),
        ("gzip_bomb", "POST", V1, gzip.compress(b"{" + b" " * 50_000_000 + b"}"),
         {**JSON, "content-encoding": "gzip"}, {413}),
        ("gzip_body", "POST", V1, gzip.compress(v1({"audio": good})), {**JSON, "content-encoding": "gzip"}, ok),
        ("deflate_body", "POST", V2, zlib.compress(v2([good])), {**JSON, "content-encoding": "deflate"}, ok),
        ("brotli_body", "POST", V1, b"\x8b\x02\x80{}\x03", {**JSON, "content-encoding": "br"}, {415}),
        ("truncated_gzip", "POST", V1, gzip.compress(v1({"audio": good}))[:-20], {**JSON, "content-encoding": "gzip"}, bad),
    ]
    for kind, ctype in (("form", "application/x-www-form-urlencoded"), ("charset", "application/json; charset=utf-8"),
                        ("capitals", "Application/JSON"), ("none", None)):
        headers = {"content-type": ctype} if ctype else {}
        cases.append((f"content_type_{kind}", "POST", V1, v1({"audio": good}), headers, ok))
        cases.append((f"content_type_{kind}_v2", "POST", V2, v2([good]), headers, ok))
    for name, text in (("mime", base64.encodebytes(wav).decode()), ("urlsafe", base64.urlsafe_b64encode(wav).decode()),
                       ("unpadded", good.rstrip("="))):
        cases.append((f"base64_{name}", "POST", V2, v2([text]), JSON, ok))
    cases.append(("base64_bad_char", "POST", V1, v1({"audio": good[:10] + "*" + good[11:]}), JSON, bad))
    return cases


def run_protocol_cases(url: str, cases, timeout: float = 60.0) -> dict:
    """Send each case on one keep-alive client; per kind: statuses and largest body; failures:
    an unexpected status, an error body over MAX_ERROR_BODY or echoing the payload, a 5xx."""
    import httpx

    kinds: dict[str, dict] = {}
    failures: list[tuple[str, str]] = []
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for name, method, path, body, headers, allowed in cases:
            try:
                r = client.request(method, path, content=body or None, headers=headers)
            except httpx.HTTPError as exc:
                failures.append((name, f"transport: {type(exc).__name__}"))
                continue
            k = kinds.setdefault(name, {"statuses": Counter(), "max_body": 0})
            k["statuses"][r.status_code] += 1
            k["max_body"] = max(k["max_body"], len(r.content))
            if r.status_code not in allowed:
                failures.append((name, f"{r.status_code} (expected {sorted(allowed)}): {r.text[:200]}"))
            if r.status_code >= 400 and (len(r.content) > MAX_ERROR_BODY or ECHO_MARKER.encode() in r.content):
                failures.append((name, f"error body of {len(r.content)} bytes{' echoing the payload' if ECHO_MARKER.encode() in r.content else ''}"))
    n5 = sum(v for k in kinds.values() for s, v in k["statuses"].items() if s >= 500)
    return {"kinds": kinds, "failures": failures, "5xx": n5}


# -- resource cases (issue 15 items 1 and 7): memory per request and in flight, slow clients ---------------
SLOW_TIMEOUT_S = 5.0  # --header_timeout_s / --body_timeout_s of the server this bench starts


def server_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class RssSampler:
    """Peak resident size of the server while a case runs (sampled every 20 ms)."""

    def __init__(self, pid: int | None):
        import threading

        self.pid, self.peak, self._stop = pid, server_rss_mb(pid) or 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, server_rss_mb(self.pid) or 0.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _ogg(seconds: float) -> bytes:
    """A voiced-like OGG Vorbis clip (16 kHz mono, harmonics of a moving pitch): 34 KB per 30 s, so
    64 of them make a 2.9 MB request, as in the issue."""
    import soundfile as sf

    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / sr
    wave = sum(0.2 / k * np.sin(k * phase) for k in range(1, 4))
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def resource_cases() -> list[tuple[str, bytes, int, set]]:
    """(kind, V1 body, requests sent at once, allowed statuses)."""
    clip = _b64(_ogg(29.9))
    big = json.dumps({"instances": [{"audio": clip}] * 64}).encode()      # 1913.6 s of audio, 2.9 MB
    fits = json.dumps({"instances": [{"audio": clip}] * 10}).encode()     # 299 s: within the request limit
    return [
        ("ogg_64x29.9s", big, 1, {400}),
        ("ogg_64x29.9s_x4_at_once", big, 4, {400}),
        ("ogg_10x29.9s", fits, 1, {200}),
        ("ogg_10x29.9s_x4_at_once", fits, 4, {200, 503}),
        ("loud_float_wav", json.dumps({"instances": [{"audio": _b64(_loud_wav())}]}).encode(), 1, {400}),
    ]


def _stalled(url: str, n: int, headers_only: bool) -> list[bytes]:
    """`n` connections that stop mid-headers or mid-body; what each got before the server closed it
    (b"" if it never answered within the socket timeout)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=SLOW_TIMEOUT_S + 30)
        s.sendall(b"POST " + V1.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" +
                  (b"content-le" if headers_only else b"content-length: 5000\r\n\r\n{\"instances\": ["))
        socks.append(s)
    answers = []
    for s in socks:
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            got += b" (not closed by the server)"
        s.close()
        answers.append(got)
    return answers


def run_resource_cases(url: str, pid: int | None, timeout: float = 300.0) -> dict:
    """Per kind: statuses, largest body, server RSS before / peak / after, 5xx; readiness and a
    one-clip request while the burst runs; RSS before and after the whole set."""
    import httpx

    kinds: dict[str, dict] = {}
    failures: list[tuple[str, str]] = []
    small = json.dumps({"instances": [{"audio": _b64(_audio(1.0))}]}).encode()
    with httpx.Client(base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=16)) as client:
        for path, body, headers in ((V1, small, JSON), *(c[2:5] for c in protocol_cases() if c[0] == "binary_raw_wav")):
            client.post(path, content=body, headers=headers)  # warm: lazy imports, first-call allocations
        time.sleep(1.5)
        start_rss = server_rss_mb(pid)
        for name, body, at_once, allowed in resource_cases():
            k = kinds.setdefault(name, {"statuses": Counter(), "max_body": 0, "request_bytes": len(body)})
            k["rss_before"] = server_rss_mb(pid)
            side = {"ready": Counter(), "one_clip": []}
            t0 = time.perf_counter()
            with RssSampler(pid) as rss, ThreadPoolExecutor(at_once + 1) as pool:
                futures = [pool.submit(client.post, V1, content=body, headers=JSON) for _ in range(at_once)]
                if at_once > 1:  # meanwhile: is readiness honest, does a one-clip request wait?
                    time.sleep(0.3)
                    side["ready"][client.get("/v2/health/ready").status_code] += 1
                    t1 = time.perf_counter()
                    r = client.post(V1, content=small, headers=JSON)
                    side["one_clip"].append((r.status_code, round(time.perf_counter() - t1, 2)))
                    side["ready"][client.get("/v2/health/ready").status_code] += 1
                for f in futures:
                    try:
                        r = f.result()
                    except httpx.HTTPError as exc:
                        failures.append((name, f"transport: {type(exc).__name__}"))
                        continue
                    k["statuses"][r.status_code] += 1
                    k["max_body"] = max(k["max_body"], len(r.content))
                    if r.status_code not in allowed:
                        failures.append((name, f"{r.status_code} (expected {sorted(allowed)}): {r.text[:200]}"))
                    if r.status_code == 503 and "retry-after" not in r.headers:
                        failures.append((name, "503 without Retry-After"))
            k["seconds"] = time.perf_counter() - t0
            k["rss_peak"] = rss.peak
            time.sleep(1.5)  # idle: the server hands freed heap back
            k["rss_after"] = server_rss_mb(pid)
            k.update({key: dict(v) if isinstance(v, Counter) else v for key, v in side.items() if v})
        for name, headers_only in (("slow_headers_x16", True), ("slow_body_x16", False)):
            t0 = time.perf_counter()
            answers = _stalled(url, 16, headers_only)
            k = kinds[name] = {"statuses": Counter(a[9:12].decode(errors="replace") or "none" for a in answers),
                               "max_body": max(len(a) for a in answers), "seconds": time.perf_counter() - t0,
                               "rss_after": server_rss_mb(pid)}
            if set(k["statuses"]) != {"408"}:
                failures.append((name, f"statuses {dict(k['statuses'])}"))
        time.sleep(1.5)
        end_rss = server_rss_mb(pid)
        ready = client.get("/v2/health/ready").status_code
        valid = client.post(V1, content=small, headers=JSON).status_code
    n5 = sum(v for k in kinds.values() for s, v in k["statuses"].items() if str(s).startswith("5") and s != 503)
    return {"kinds": kinds, "failures": failures, "5xx": n5, "rss_start": start_rss, "rss_end": end_rss,
            "ready_after": ready, "valid_after": valid}


def print_resource_report(res: dict) -> bool:
    print(f"  resource cases (server RSS MB; 503 = admission control, counted apart from 5xx faults):")
    for name, k in res["kinds"].items():
        rss = " ".join(f"{key.removeprefix('rss_')} {k[key]:.0f}" for key in ("rss_before", "rss_peak", "rss_after")
                       if k.get(key) is not None)
        extra = "".join(f" {key} {k[key]}" for key in ("ready", "one_clip") if key in k)
        print(f"    {name:26s} statuses {dict(k['statuses'])} largest body {k['max_body']} B"
              f"{' request ' + str(k['request_bytes']) + ' B' if 'request_bytes' in k else ''} "
              f"in {k['seconds']:.1f} s; RSS {rss}{extra}")
    start, end = res["rss_start"], res["rss_end"]
    within = start is not None and end is not None and end <= 1.1 * start
    if start is not None and end is not None:
        print(f"  server RSS before the run {start:.0f} MB, after it {end:.0f} MB ({100 * (end / start - 1):+.1f} %, "
              f"target within 10 %); ready after {res['ready_after']}, valid request after {res['valid_after']}")
    for name, text in res["failures"][:20]:
        print(f"  FAIL {name}: {text}")
    return not res["failures"] and res["5xx"] == 0 and within and res["ready_after"] == res["valid_after"] == 200


def run_fuzz(url: str, cases, concurrency: int = 4, timeout: float = 60.0) -> dict:
    """Send every case; returns counts per status, the 5xx/transport failures and readiness after."""
    import httpx

    statuses: Counter = Counter()
    failures: list[tuple[str, str]] = []
    with httpx.Client(base_url=url, timeout=timeout) as client:
        def send(case):
            name, path, body, headers = case
            try:
                r = client.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                return name, None, f"{type(exc).__name__}: {exc}"
            return name, r.status_code, r.text[:300]

        with ThreadPoolExecutor(concurrency) as pool:
            for name, status, text in pool.map(send, cases):
                statuses[status] += 1
                repaired = status == 200 and name.endswith(MAY_DECODE)
                if status is None or not (400 <= status < 500 or repaired):
                    failures.append((name, f"{status}: {text}"))
        ready = client.get("/v2/health/ready").status_code
        good = {"instances": [{"audio": _b64(_audio(1.0)), "text": "still fine"}]}
        after = client.post(V1, json=good).status_code
    return {"statuses": dict(statuses), "failures": failures, "ready_after": ready, "valid_after": after}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--url", default=None, help="an already running predictor (model name 'emoflow')")
    ap.add_argument("--pid", type=int, default=None, help="its process id, for RSS (with --url)")
    ap.add_argument("--no-resources", action="store_true", help="skip the resource cases (big requests, slow clients)")
    args = ap.parse_args(argv)

    cases = make_cases(args.requests, args.seed)
    kinds = Counter(name for name, *_ in cases)
    if args.url:
        result, took = _timed(run_fuzz, args.url, cases, args.concurrency)
        proto = run_protocol_cases(args.url, protocol_cases())
        res = None if args.no_resources else run_resource_cases(args.url, args.pid)
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_serving import _free_port, register
        from emoflow.serving.local import reap_in_background, start_local_server, stop_local_server

        with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
            store = register(Path(tmp), "tiny")
            port = _free_port()
            url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port, extra_args=[
                "--header_timeout_s", str(SLOW_TIMEOUT_S), "--body_timeout_s", str(SLOW_TIMEOUT_S)])
            pid = int((Path(os.environ["EMOFLOW_HOME"]) / "serve" / f"{port}.pid").read_text())
            reap_in_background(pid)
            try:
                res = None if args.no_resources else run_resource_cases(url, pid)
                result, took = _timed(run_fuzz, url, cases, args.concurrency)
                proto = run_protocol_cases(url, protocol_cases())
                time.sleep(1.5)
                if res is not None:  # R2: the server's RSS after the whole run against before it
                    res["rss_end"] = server_rss_mb(pid)
            finally:
                stop_local_server(port)
    print(f"R2 fuzz: {len(cases)} malformed requests (seed {args.seed}) in {took:.1f} s, {len(kinds)} kinds "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("  kinds:", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print("  statuses:", ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items(), key=str)))
    n5 = sum(v for k, v in result["statuses"].items() if k is None or k >= 500)
    print(f"  5xx or transport errors: {n5}; ready after: {result['ready_after']}; valid request after: {result['valid_after']}")
    for name, text in result["failures"][:20]:
        print(f"  FAIL {name}: {text}")
    print(f"  protocol cases ({len(proto['kinds'])} kinds, 5xx: {proto['5xx']}):")
    for name, k in sorted(proto["kinds"].items()):
        print(f"    {name:32s} statuses {dict(k['statuses'])} largest body {k['max_body']} B")
    for name, text in proto["failures"][:20]:
        print(f"  FAIL {name}: {text}")
    ok = not result["failures"] and result["ready_after"] == 200 and result["valid_after"] == 200 \
        and not proto["failures"]
    if res is not None:
        ok = print_resource_report(res) and ok
    print("R2", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
