"""Answers of the predictor's two protocols: the V1 ``predictions`` body and the v2 InferResponse.

Each answer gives the label, per-emotion probabilities, the model name and version, the mode
(``audio+text``, ``audio-only``, ``asr-text`` or ``text-only``), the protocol (``strict`` or
``speaker-normalised``) and the modality weights where the model has them.
"""

from __future__ import annotations

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferResponse

try:  # strict and speaker-normalised answers of one model differ in distribution: kept apart here
    from prometheus_client import Counter

    PROTOCOL_COUNT = Counter("emoflow_protocol", "Predictions answered, by protocol", ["model", "protocol"])
except ValueError:  # module imported twice under two names: record nothing
    PROTOCOL_COUNT = None


def v1_response(results: list[dict], name: str, version: str) -> dict:
    predictions = [{**r, "model": name, "version": version} for r in results]
    return {"predictions": predictions, "model_name": name, "model_version": version}


def v2_outputs(results: list[dict], labels: list[str]) -> list[InferOutput]:
    n = len(results)
    probs = np.array([[r["probabilities"][lab] for lab in labels] for r in results], dtype=np.float32)
    outputs = [
        InferOutput("label", [n], "BYTES", [r["label"] for r in results]),
        InferOutput("probabilities", list(probs.shape), "FP32", probs.flatten().tolist(),
                    parameters={"emotions": ",".join(labels)}),
        InferOutput("mode", [n], "BYTES", [r["mode"] for r in results]),
        InferOutput("protocol", [n], "BYTES", [r["protocol"] for r in results]),
    ]
    if all("modality_weights" in r for r in results):
        w = [[r["modality_weights"]["audio"], r["modality_weights"]["text"]] for r in results]
        outputs.append(InferOutput("modality_weights", [n, 2], "FP32", [x for row in w for x in row]))
    return outputs


def v2_response(request_id: str | None, results: list[dict], labels: list[str], name: str,
                version: str) -> InferResponse:
    return InferResponse(response_id=request_id or "", model_name=name, model_version=version,
                         infer_outputs=v2_outputs(results, labels))


def output_types(labels: list[str], modality_weights: bool) -> list[dict]:
    """The v2 outputs a model answers with (name, datatype, shape; -1: one row per instance)."""
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
        {"name": "mode", "datatype": "BYTES", "shape": [-1]},
        {"name": "protocol", "datatype": "BYTES", "shape": [-1]},
    ]
    if modality_weights:
        outputs.append({"name": "modality_weights", "datatype": "FP32", "shape": [-1, 2]})
    return outputs


def input_types(text_only: bool) -> list[dict]:
    """The v2 inputs a model takes: BYTES, one value per instance (audio is required for audio
    models, text for text-only models; the others are optional)."""
    names = ["text", "speaker"] if text_only else ["audio", "text", "speaker"]
    return [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in names]


def _bytes_element(v) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def _binary(output: InferOutput) -> bytes:
    """The binary tensor extension's encoding: BYTES elements as 4-byte little-endian length +
    bytes; numbers as little-endian row-major arrays."""
    if output.datatype == "BYTES":
        parts = []
        for v in output.data:
            b = _bytes_element(v)
            parts += [len(b).to_bytes(4, "little"), b]
        return b"".join(parts)
    return np.asarray(output.data, dtype={"FP32": "<f4"}[output.datatype]).tobytes()


def v2_rest(response: InferResponse, requested: list | None, binary_default: bool) -> tuple[dict | bytes, int | None]:
    """The REST body of a v2 response: a JSON dict, or (binary tensor extension) JSON header +
    binary tail and the header's length. `requested`: the request's RequestedOutputs (None: all
    outputs, in the model's order); each output is binary when its ``binary_data`` parameter says
    so, else as the request's ``binary_data_output`` says. Parameters are left out when empty
    (never ``null``)."""
    import orjson

    by_name = {o.name: o for o in response.outputs}
    chosen = [(by_name[r.name], (r.parameters or {}).get("binary_data", binary_default)) for r in requested] \
        if requested else [(o, binary_default) for o in response.outputs]
    outputs, tail = [], []
    for out, binary in chosen:
        entry = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = dict(out.parameters or {})
        if binary:
            raw = _binary(out)
            tail.append(raw)
            params["binary_data_size"] = len(raw)
        else:
            entry["data"] = [_bytes_element(v).decode("utf-8") if out.datatype == "BYTES" else v for v in out.data]
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    body = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        body["id"] = response.id
    if not tail:
        return body, None
    header = orjson.dumps(body)
    return header + b"".join(tail), len(header)
