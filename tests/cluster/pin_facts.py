"""Re-pin the CRD facts under tests/cluster/pinned/ from an upstream CRD file (a maintainer tool).

The contract tests never read third-party files: they read OUR facts (field paths, types, enums,
required fields, patterns, bounds) for the fields emoflow's objects use, plus one level of the
sibling fields of every object on those paths. When KServe or the Prometheus Operator is upgraded,
fetch the new CRD (kserve/kserve config/crd/full/serving.kserve.io_inferenceservices.yaml;
prometheus-operator example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,
prometheusrules}.yaml) and run

    python tests/cluster/pin_facts.py CRD.yaml OUT.yaml --header "source line" ... \
        --sample rendered-object.yaml ... --path spec.predictor.imagePullSecrets[].name ...

then review the diff of OUT.yaml like any other code change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contract import join  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crd")
    parser.add_argument("out")
    parser.add_argument("--header", action="append", default=[], help="comment line for the file header")
    parser.add_argument("--sample", action="append", default=[], help="a rendered object whose paths we use")
    parser.add_argument("--path", action="append", default=[], help="a further fact path we use")
    args = parser.parse_args(argv)
    crd = next(d for d in yaml.safe_load_all(Path(args.crd).read_text()) if d)
    samples = [obj for sample in args.sample for obj in yaml.safe_load_all(Path(sample).read_text())
               if obj and obj.get("kind") == crd["spec"]["names"]["kind"]]
    text = "".join(f"# {line}\n" for line in args.header)
    text += yaml.safe_dump(pin(crd, samples, args.path), sort_keys=False, width=120)
    Path(args.out).write_text(text)
    print(f"pinned {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
