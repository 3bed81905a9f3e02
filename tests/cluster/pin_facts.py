"""Re-pin the CRD facts under tests/cluster/pinned/ from an upstream CRD file (a maintainer tool).

The contract tests never read third-party files: they read OUR facts (field paths, types, enums,
required fields, patterns, bounds) for the fields emoflow's objects use, plus one level of the
sibling fields of every object on those paths. When KServe or the Prometheus Operator is upgraded,
fetch the new CRD (kserve/kserve config/crd/full/serving.kserve.io_inferenceservices.yaml;
prometheus-operator example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,
prometheusrules}.yaml) and run, from the repository root with PYTHONPATH=src,

    python tests/cluster/pin_facts.py CRD.yaml tests/cluster/pinned/<file>.yaml \
        --header "<the header lines of the file, with the new commit and version>" ...

It pins the paths of every rendered object of that kind (kustomize renders, and the deploy
builder's InferenceService variants) plus :data:`EXTRA_PATHS`; review the diff like code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, as pytest's pythonpath has it
from cluster.contract import join  # noqa: E402

_KEEP = ("enum", "pattern", "minimum", "maximum", "format", "minItems", "maxItems")


def node_facts(schema: dict) -> dict:
    """The facts of one schema node we check: type, enum, required, property names, bounds."""
    facts: dict = {}
    if schema.get("x-kubernetes-int-or-string"):
        facts["type"] = "int-or-string"
    elif "type" in schema:
        facts["type"] = schema["type"]
    for key in _KEEP:
        if key in schema:
            facts[key] = schema[key]
    if schema.get("required"):
        facts["required"] = sorted(schema["required"])
    if "properties" in schema:
        facts["properties"] = sorted(schema["properties"])
    if isinstance(schema.get("additionalProperties"), dict):
        facts["values"] = node_facts(schema["additionalProperties"]).get("type", "any")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        facts["open"] = True
    return facts


def pin(crd: dict, samples: list[dict], extra_paths: list[str]) -> dict:
    """Facts of every schema node the samples (and ``extra_paths``) reach, and of their siblings."""
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    root = version["schema"]["openAPIV3Schema"]
    facts: dict[str, dict] = {}

    def record(path: str, schema: dict, siblings: bool) -> None:
        facts.setdefault(path, node_facts(schema))
        if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
            facts.setdefault(path + "[]", node_facts(schema["items"]))
        if siblings:
            for name, sub in (schema.get("properties") or {}).items():
                record(join(path, name), sub, False)

    def visit(value, path: str, schema: dict) -> None:
        record(path, schema, True)
        if path == "metadata":
            return
        if isinstance(value, dict) and "properties" in schema:
            for key, item in value.items():
                if key in schema["properties"]:
                    visit(item, join(path, key), schema["properties"][key])
        elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
            for item in value.values():
                visit(item, path + ".*", schema["additionalProperties"])
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                visit(item, path + "[]", schema["items"])

    for sample in samples:
        visit(sample, "", root)
    for path in extra_paths:  # a.b[].c: walk the schema only
        node, here = root, ""
        record(here, node, True)
        for part in path.split("."):
            name, lists = part.replace("[]", ""), part.count("[]")
            node = (node.get("properties") or {}).get(name)
            if node is None:
                raise SystemExit(f"{path}: no field {name!r} in the CRD schema")
            here = join(here, name)
            record(here, node, True)
            for _ in range(lists):
                node, here = node["items"], here + "[]"
                record(here, node, True)
    return {"group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"],
            "version": version["name"], "fields": dict(sorted(facts.items()))}


# Fields we use or are about to use beyond what today's rendered objects hold (their siblings are pinned too).
EXTRA_PATHS = {
    "InferenceService": [
        "metadata", "spec.predictor.annotations", "spec.predictor.imagePullSecrets[].name",
        "spec.predictor.containers[].envFrom[].secretRef.name", "spec.predictor.containers[].envFrom[].secretRef.optional",
        "spec.predictor.containers[].envFrom[].configMapRef.name",
        "spec.predictor.containers[].env[].valueFrom.secretKeyRef.name",
        "spec.predictor.containers[].env[].valueFrom.secretKeyRef.key",
        "spec.predictor.containers[].env[].valueFrom.fieldRef.fieldPath",
        "spec.predictor.containers[].resources.limits", "spec.predictor.containers[].resources.requests",
        "spec.predictor.containers[].livenessProbe.httpGet.path", "spec.predictor.containers[].volumeMounts[].mountPath",
        "spec.predictor.volumes[].secret.secretName", "spec.predictor.tolerations[].tolerationSeconds",
    ],
    "PodMonitor": [
        "metadata", "spec.podMetricsEndpoints[].portNumber", "spec.podMetricsEndpoints[].targetPort",
        "spec.namespaceSelector.matchNames", "spec.namespaceSelector.any",
        "spec.podMetricsEndpoints[].relabelings[].action", "spec.podMetricsEndpoints[].metricRelabelings[].action",
        "spec.selector.matchLabels", "spec.selector.matchExpressions[].values",
    ],
    "PrometheusRule": ["metadata", "spec.groups[].rules[].keep_firing_for"],
}


def samples(kind: str) -> list[dict]:
    """emoflow's objects of ``kind`` as a cluster gets them: every kustomize render, and for
    InferenceService the deploy builder's variants (GPU, CPU, canary, pull secrets, assets, env)."""
    import inspect
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    docs = []
    for target in [repo / "manifests", *sorted(p.parent for p in (repo / "manifests" / "overlays").glob("*/kustomization.yaml"))]:
        out = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True, check=True).stdout
        docs += [d for d in yaml.safe_load_all(out) if d]
    if kind == "InferenceService":
        from emoflow.serving import isvc as deploy

        accepted = inspect.signature(deploy.build_inference_service).parameters
        for extra in ({"gpu": 1}, {"gpu": 0}, {"gpu": 1, "canary_traffic_percent": 10, "env": {"A": "b"}},
                      {"gpu": 1, "image_pull_secrets": ["regcred"], "assets": "s3://b/assets"}):
            kw = {k: v for k, v in extra.items() if k in accepted}
            docs.append(deploy.to_manifest(deploy.build_inference_service("emoflow", "emoflow", "s3://b/r/emoflow/v1/", **kw)))
    return [d for d in docs if d.get("kind") == kind]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crd", help="the upstream CRD file (read, never copied)")
    parser.add_argument("out", help="the pinned facts file to write")
    parser.add_argument("--header", action="append", default=[], help="comment line: source file, commit, version, licence")
    args = parser.parse_args(argv)
    crd = next(d for d in yaml.safe_load_all(Path(args.crd).read_text()) if d)
    kind = crd["spec"]["names"]["kind"]
    text = "".join(f"# {line}\n" for line in args.header)
    text += yaml.safe_dump(pin(crd, samples(kind), EXTRA_PATHS.get(kind, [])), sort_keys=False, width=120)
    Path(args.out).write_text(text)
    print(f"pinned {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
