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
