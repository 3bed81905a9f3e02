"""The cluster's side of the contract, as rule functions over what emoflow renders.

Each rule takes rendered objects (plain dicts, as kubectl or the KFP backend reads them) and
returns a list of problems, each naming the object and the field; an empty list means the rule
holds. Two kinds of rule:

(a) CRD facts: the OpenAPI facts of KServe's InferenceService and the Prometheus Operator's
    PodMonitor / PrometheusRule that we rely on, pinned as our own data under ``pinned/`` (field
    paths, types, enums, required fields, patterns, bounds; each file cites its source, version and
    licence). :func:`crd_problems` checks an object field by field against them, like the API
    server's structural-schema validation would (unknown fields are pruned there, silently).
(b) Backend rules that bit us on a real cluster: pod-spec placeholders must come from STRING
    parameters (:func:`pod_spec_placeholder_problems`), every task input resolves in its DAG
    (:func:`dangling_binding_problems`), every image is the configured one
    (:func:`image_problems`, :func:`deploy_image_problems`), every Secret / ServiceAccount referenced
    exists where it is needed (:func:`reference_problems`), no object lands without a namespace or
    takes over a namespace it does not own (:func:`namespace_problems`), the run's account may
    do what deploy does (:func:`rbac_problems`), and a PodMonitor in the predictor's namespace scrapes
    the predictor pod exactly once in both KServe modes (:func:`scrape_port_problems` over
    :func:`predictor_pod`; the pod shapes are tests/manifests/kserve_pod_shapes.py's).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from manifests import kserve_pod_shapes as shapes

PINNED = Path(__file__).resolve().parent / "pinned"
CRD_FACTS = {  # (group, kind) -> pinned facts file
    ("serving.kserve.io", "InferenceService"): "kserve-inferenceservice.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "prometheus-operator-podmonitor.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheus-operator-prometheusrule.yaml",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume", "ClusterServingRuntime",
                  "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@cache
def pinned(name: str) -> dict:
    """One pinned facts file (comments are its citation header)."""
    return yaml.safe_load((PINNED / name).read_text())


def name_of(obj: Mapping) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


# --------------------------------------------------------------------------- (a) CRD facts

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, Mapping),
    "array": lambda v: isinstance(v, list),
    "int-or-string": lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
}


def check_fields(obj: Any, fields: Mapping[str, Mapping], where: str = "") -> list[str]:
    """Problems of ``obj`` against pinned schema facts (``fields``: fact path -> facts)."""
    problems: list[str] = []

    def visit(value: Any, path: str) -> None:
        at = f"{where}{path or '<root>'}"
        facts = fields.get(path)
        if facts is None:
            problems.append(f"{at}: field not in the pinned CRD facts (unknown to the CRD, or pin it "
                            "with tests/cluster/pin_facts.py)")
            return
        kind = facts.get("type")
        if kind and not _TYPES[kind](value):
            problems.append(f"{at}: expected {kind}, got {type(value).__name__} {value!r}")
            return
        if "enum" in facts and value not in facts["enum"]:
            problems.append(f"{at}: {value!r} is not one of {facts['enum']}")
        if "pattern" in facts and isinstance(value, str) and not re.search(facts["pattern"], value):
            problems.append(f"{at}: {value!r} does not match the CRD pattern {facts['pattern']!r}")
        if "minimum" in facts and _TYPES["number"](value) and value < facts["minimum"]:
            problems.append(f"{at}: {value!r} is below the CRD minimum {facts['minimum']}")
        if "maximum" in facts and _TYPES["number"](value) and value > facts["maximum"]:
            problems.append(f"{at}: {value!r} is above the CRD maximum {facts['maximum']}")
        if path == "metadata":  # ObjectMeta: the API server's own schema, not the CRD's
            return
        if isinstance(value, Mapping):
            for req in facts.get("required", []):
                if req not in value:
                    problems.append(f"{at}: required field {req!r} is missing")
            if "properties" in facts:
                for key, item in value.items():
                    if key in facts["properties"]:
                        visit(item, join(path, key))
                    elif not facts.get("open"):
                        problems.append(f"{where}{join(path, key)}: unknown field (the API server prunes it)")
            elif "values" in facts:
                for key, item in value.items():
                    if facts["values"] in _TYPES and not _TYPES[facts["values"]](item):
                        problems.append(f"{at}.{key}: expected {facts['values']}, got {item!r}")
                    elif join(path, "*") in fields:
                        visit(item, join(path, "*"))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                visit(item, path + "[]")

    visit(obj, "")
    return problems


def crd_problems(obj: Mapping) -> list[str]:
    """``obj`` (an InferenceService, PodMonitor or PrometheusRule) against the pinned CRD facts."""
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    key = (group, obj.get("kind"))
    if key not in CRD_FACTS:
        return [f"{name_of(obj)}: no pinned CRD facts for {obj.get('apiVersion')} {obj.get('kind')}"]
    facts = pinned(CRD_FACTS[key])
    if version != facts["version"]:
        return [f"{name_of(obj)}: apiVersion {obj.get('apiVersion')} is not the served version "
                f"{facts['group']}/{facts['version']}"]
    return check_fields(dict(obj), facts["fields"], where=f"{name_of(obj)}: ")


# --------------------------------------------------------------------------- (b) KFP backend rules

# Pod-spec fields of a KFP v2 container the backend driver resolves from a runtime parameter with
# resolvePodSpecInputRuntimeParameter, which returns GetStringValue() of the parameter's value:
# "" for a NUMBER/BOOL/STRUCT, so the field is then silently dropped or wrong.
# kubeflow/pipelines backend/src/v2/driver/resolve.go (resolvePodSpecInputRuntimeParameter) and
# driver.go initPodSpecPatch (accelerator type/count, image; cpu/memory limits and requests).
POD_SPEC_FIELDS = ("image", "resources.accelerator.resourceType", "resources.accelerator.resourceCount",
                   "resources.resourceCpuLimit", "resources.resourceMemoryLimit",
                   "resources.resourceCpuRequest", "resources.resourceMemoryRequest")
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _components_by_executor(spec: Mapping) -> dict[str, tuple[str, Mapping]]:
    return {comp["executorLabel"]: (name, comp) for name, comp in (spec.get("components") or {}).items()
            if "executorLabel" in comp}


def pod_spec_placeholder_problems(spec: Mapping) -> list[str]:
    """Every pod-spec placeholder of a compiled pipeline must come from a STRING value.

    The placeholder names an input of the task running the executor; that input is followed up
    through the enclosing DAGs to the pipeline parameter (or constant) that feeds it at run time."""
    problems = []
    owners = _components_by_executor(spec)
    for label, executor in sorted((spec.get("deploymentSpec") or {}).get("executors", {}).items()):
        container = executor.get("container") or {}
        comp_name = owners.get(label, ("?", {}))[0]
        users = [(o, t) for o, _, t in _tasks(spec) if (t.get("componentRef") or {}).get("name") == comp_name]
        for field in POD_SPEC_FIELDS:
            value = _get(container, field)
            match = _PLACEHOLDER.fullmatch(value) if isinstance(value, str) else None
            if not match:
                continue
            for owner, task in users:
                binding = ((task.get("inputs") or {}).get("parameters") or {}).get(match.group(1))
                if binding is None:
                    problems.append(f"{label}: container.{field} = {value} names no input of its task")
                    continue
                source, ptype = _source_type(spec, owner, binding)
                if ptype != "STRING":
                    problems.append(
                        f"{label}: container.{field} = {value} comes from {source} of type {ptype}; the KFP "
                        "driver reads pod-spec placeholders with GetStringValue(), so a non-STRING value "
                        "resolves to \"\" and the setting is silently dropped: make it a STRING parameter")
    return sorted(set(problems))


def _tasks(spec: Mapping) -> Iterable[tuple[str, str, Mapping]]:
    """(component holding the DAG, task name, task) for every task of every DAG."""
    dags = [("root", spec.get("root") or {})] + list((spec.get("components") or {}).items())
    for owner, comp in dags:
        for name, task in ((comp.get("dag") or {}).get("tasks") or {}).items():
            yield owner, name, task


def _trace(spec: Mapping, owner: str, binding: Mapping) -> tuple[str, Any]:
    """Follow a task input binding up through the DAGs: ("constant", value), ("root", parameter
    name) or ("unknown", description)."""
    seen = set()
    while True:
        if "runtimeValue" in binding:
            return "constant", binding["runtimeValue"].get("constant")
        name = binding.get("componentInputParameter")
        if name is None:
            return "unknown", f"task output or expression {binding}"
        if owner == "root":
            return "root", name
        if (owner, name) in seen:
            return "unknown", f"cycle at {owner}.{name}"
        seen.add((owner, name))
        parents = [(o, t) for o, _, t in _tasks(spec) if (t.get("componentRef") or {}).get("name") == owner]
        if len(parents) != 1:
            return "unknown", f"{owner} is used by {len(parents)} tasks"
        owner, task = parents[0]
        binding = ((task.get("inputs") or {}).get("parameters") or {}).get(name)
        if binding is None:  # not threaded down (see dangling_binding_problems): the channel's name
            return "root", name.removeprefix("pipelinechannel--")


_CONSTANT_TYPES = {str: "STRING", bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE",
                   list: "LIST", dict: "STRUCT"}


def _source_type(spec: Mapping, owner: str, binding: Mapping) -> tuple[str, str | None]:
    kind, what = _trace(spec, owner, binding)
    if kind == "constant":
        return f"constant {what!r}", _CONSTANT_TYPES.get(type(what))
    if kind == "root":
        param = ((spec["root"].get("inputDefinitions") or {}).get("parameters") or {}).get(what) or {}
        return f"pipeline parameter {what!r}", param.get("parameterType")
    return what, None


def dangling_binding_problems(spec: Mapping) -> list[str]:
    """Every ``componentInputParameter`` a task binds is an input its enclosing DAG declares.

    The KFP driver resolves such a binding from the parent DAG's own inputs and fails the task with
    "parent DAG does not have input parameter ..." otherwise (kubeflow/pipelines
    backend/src/v2/driver/resolve.go, resolveInputParameter)."""
    problems = []
    comps = {"root": spec.get("root") or {}, **(spec.get("components") or {})}
    for owner, name, task in _tasks(spec):
        declared = ((comps[owner].get("inputDefinitions") or {}).get("parameters")) or {}
        for param, binding in sorted(((task.get("inputs") or {}).get("parameters") or {}).items()):
            source = binding.get("componentInputParameter")
            if source is not None and source not in declared:
                problems.append(f"{owner} task {name}: input {param!r} reads {source!r}, which {owner} does "
                                "not declare: the KFP driver fails with \"parent DAG does not have input "
                                f"parameter {source}\"")
    return problems


def resolve_parameter(spec: Mapping, owner: str, binding: Mapping) -> tuple[bool, Any]:
    """The compile-time value a task input binding resolves to: (known, value)."""
    kind, what = _trace(spec, owner, binding)
    if kind == "constant":
        return True, what
    if kind == "root":
        param = ((spec["root"].get("inputDefinitions") or {}).get("parameters") or {}).get(what) or {}
        return "defaultValue" in param, param.get("defaultValue")
    return False, None


def image_problems(documents: Iterable[tuple[str, Any]], registry: str, placeholder: str) -> list[str]:
    """No rendered document mentions the placeholder registry; every image names ``registry``.

    ``documents``: (label, parsed object) pairs; every ``image`` string and every string containing
    ``placeholder`` anywhere (parameter defaults, env values, kustomize ``images:``) counts."""
    problems = []

    def visit(value: Any, label: str, path: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                sub = join(path, str(key))
                if key == "image" and isinstance(item, str) and not _PLACEHOLDER.fullmatch(item) \
                        and not item.startswith(registry + "/"):
                    problems.append(f"{label}: {sub} = {item!r} is not from the configured registry {registry}")
                visit(item, label, sub)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                visit(item, label, f"{path}[{i}]")
        elif isinstance(value, str) and placeholder in value:
            problems.append(f"{label}: {path} = {value!r} still names the placeholder registry {placeholder}")

    for label, doc in documents:
        visit(doc, label, "")
    return problems


def deploy_image_problems(spec: Mapping, expected: str, component: str = "comp-deploy",
                          inputs: tuple[str, ...] = ("image", "serving_image")) -> list[str]:
    """The deploy task gets its InferenceService image from the compiled pipeline, equal to ``expected``.

    An image chosen at run time from the deploy pod's environment is the placeholder default,
    whatever registry the pipeline was compiled for."""
    tasks = [(o, n, t) for o, n, t in _tasks(spec) if (t.get("componentRef") or {}).get("name") == component]
    if not tasks:
        return [f"no task runs {component}"]
    problems = []
    for owner, name, task in tasks:
        params = (task.get("inputs") or {}).get("parameters") or {}
        bound = [k for k in inputs if k in params]
        if not bound:
            problems.append(f"task {name}: no {' / '.join(inputs)} input, so the InferenceService image is "
                            "picked at run time from the pod's environment (the placeholder registry), not "
                            f"fixed at compile time to {expected}")
            continue
        known, value = resolve_parameter(spec, owner, params[bound[0]])
        if not known or value != expected:
            problems.append(f"task {name}: input {bound[0]} resolves to {value!r} at compile time, "
                            f"expected the configured serving image {expected!r}")
    return problems


def pipeline_secret_refs(platform: Mapping) -> list[tuple[str, str]]:
    """(Secret name, where) for every Secret the compiled pipeline's platform spec mounts or injects."""
    refs = []
    executors = ((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec", {})
    for label, cfg in sorted((executors.get("executors") or {}).items()):
        for item in cfg.get("secretAsEnv", []) + cfg.get("secretAsVolume", []):
            name = item.get("secretName") or _get(item, "secretNameParameter.runtimeValue.constant")
            if name:
                refs.append((name, f"compiled pipeline {label}"))
        for item in cfg.get("imagePullSecret", []):
            name = item.get("secretName") or _get(item, "secretNameParameter.runtimeValue.constant")
            if name:
                refs.append((name, f"compiled pipeline {label} imagePullSecret"))
    return refs


# --------------------------------------------------------------------------- (b) namespace rules


def _pod_specs(obj: Mapping) -> list[tuple[str, Mapping]]:
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return [("spec", spec)]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return [("spec.template.spec", _get(spec, "template.spec") or {})]
    if kind == "CronJob":
        return [("spec.jobTemplate.spec.template.spec", _get(spec, "jobTemplate.spec.template.spec") or {})]
    if kind == "InferenceService":
        return [(f"spec.{c}", spec[c]) for c in ("predictor", "transformer", "explainer") if spec.get(c)]
    return []


def references(obj: Mapping) -> list[tuple[str, str, str, str]]:
    """(kind, namespace, name, field) of every Secret / ServiceAccount ``obj`` refers to."""
    ns = (obj.get("metadata") or {}).get("namespace") or ""
    out = []
    if obj.get("kind") == "ServiceAccount":
        out += [("Secret", ns, s["name"], "secrets") for s in obj.get("secrets") or []]
        out += [("Secret", ns, s["name"], "imagePullSecrets") for s in obj.get("imagePullSecrets") or []]
    if obj.get("kind") in {"RoleBinding", "ClusterRoleBinding"}:
        # a RoleBinding's ServiceAccount subject without a namespace is in the binding's namespace
        # (kubernetes pkg/registry/rbac/validation/rule.go appliesToUser); a ClusterRoleBinding needs one
        for i, sub in enumerate(obj.get("subjects") or []):
            if sub.get("kind") == "ServiceAccount":
                out.append(("ServiceAccount", sub.get("namespace") or ns, sub.get("name"), f"subjects[{i}]"))
    for path, pod in _pod_specs(obj):
        sa = pod.get("serviceAccountName")
        if sa:
            out.append(("ServiceAccount", ns, sa, f"{path}.serviceAccountName"))
        out += [("Secret", ns, s["name"], f"{path}.imagePullSecrets") for s in pod.get("imagePullSecrets") or []]
        out += [("Secret", ns, v["secret"]["secretName"], f"{path}.volumes[{v.get('name')}]")
                for v in pod.get("volumes") or [] if (v.get("secret") or {}).get("secretName")]
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            for env in c.get("env") or []:
                ref = _get(env, "valueFrom.secretKeyRef.name")
                if ref:
                    out.append(("Secret", ns, ref, f"{path}.containers[{c.get('name')}].env[{env.get('name')}]"))
            for src in c.get("envFrom") or []:
                ref = _get(src, "secretRef.name")
                if ref:
                    out.append(("Secret", ns, ref, f"{path}.containers[{c.get('name')}].envFrom"))
    return out


def reference_problems(objects: list[Mapping], extra: Iterable[tuple[str, str, str, str]] = (),
                       external: Iterable[tuple[str, str, str]] = ()) -> list[str]:
    """Every Secret / ServiceAccount referenced exists in the namespace it is referenced from.

    ``extra``: further references (kind, namespace, name, where), e.g. the compiled pipeline's
    Secrets in the namespace its pods run in. ``external``: (kind, namespace, name) that the
    cluster provides (KFP's own runner accounts)."""
    defined = {(o.get("kind"), (o.get("metadata") or {}).get("namespace") or "", (o.get("metadata") or {}).get("name"))
               for o in objects if o.get("kind") in {"Secret", "ServiceAccount"}} | set(external)
    problems = []
    refs = [(name_of(o), *r) for o in objects for r in references(o)]
    refs += [(where, kind, ns, name, "") for kind, ns, name, where in extra]
    for who, kind, ns, name, field in refs:
        if (kind, ns, name) not in defined:
            here = [d[1] or "<no namespace>" for d in defined if d[0] == kind and d[2] == name]
            problems.append(f"{who}{' ' + field if field else ''}: {kind} {name!r} is referenced in namespace "
                            f"{ns or '<no namespace>'!s} but "
                            + (f"exists only in {sorted(here)}" if here else "is not rendered anywhere"))
    return problems


def namespace_problems(objects: list[Mapping], run_namespace: str | None = None) -> list[str]:
    """Every namespaced object has a namespace; none takes over the namespace the runs live in.

    A Namespace object for ``run_namespace`` (``kubeflow`` or a profile namespace, which KFP and
    the profile controller own) would be deleted with ``kubectl delete -k``."""
    problems = []
    for obj in objects:
        ns = (obj.get("metadata") or {}).get("namespace")
        if obj.get("kind") in CLUSTER_SCOPED:
            if obj.get("kind") == "Namespace" and run_namespace and obj["metadata"].get("name") == run_namespace:
                problems.append(f"{name_of(obj)}: the overlay owns namespace {run_namespace!r}, which "
                                "the pipelines' KFP install owns (`kubectl delete -k` would delete it)")
        elif not ns:
            problems.append(f"{name_of(obj)}: rendered without a namespace (lands in whatever "
                            "namespace kubectl's context points at)")
    return problems


# --------------------------------------------------------------------------- (b) RBAC


def _rule_allows(rule: Mapping, group: str, resource: str, verb: str) -> bool:
    return (any(g in ("*", group) for g in rule.get("apiGroups") or [])
            and any(r in ("*", resource) for r in rule.get("resources") or [])
            and any(v in ("*", verb) for v in rule.get("verbs") or []))


def rbac_problems(objects: list[Mapping], account: tuple[str, str], namespace: str,
                  needs: Mapping[tuple[str, str], Iterable[str]],
                  external_rules: Iterable[Mapping] = ()) -> list[str]:
    """The ServiceAccount ``account`` = (namespace, name) may do ``needs`` in ``namespace``.

    ``needs``: (apiGroup, resource) -> verbs. Rules come from the rendered RoleBindings (to rendered
    Roles / ClusterRoles) in ``namespace`` and ClusterRoleBindings whose subjects include the
    account, plus ``external_rules`` the cluster already grants the account."""
    sa_ns, sa_name = account
    roles = {(o.get("kind"), (o.get("metadata") or {}).get("namespace") or "", o["metadata"]["name"]): o
             for o in objects if o.get("kind") in {"Role", "ClusterRole"}}
    rules = list(external_rules)
    for obj in objects:
        kind, ns = obj.get("kind"), (obj.get("metadata") or {}).get("namespace") or ""
        if kind not in {"RoleBinding", "ClusterRoleBinding"} or (kind == "RoleBinding" and ns != namespace):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and (s.get("namespace") or ns) == sa_ns for s in obj.get("subjects") or []):
            continue
        ref = obj.get("roleRef") or {}
        role = roles.get((ref.get("kind"), ns if ref.get("kind") == "Role" else "", ref.get("name")))
        rules += (role or {}).get("rules") or []
    problems = []
    for (group, resource), verbs in needs.items():
        missing = [v for v in verbs if not any(_rule_allows(r, group, resource, v) for r in rules)]
        if missing:
            problems.append(f"ServiceAccount {sa_ns}/{sa_name} may not {', '.join(missing)} "
                            f"{resource}.{group or 'core'} in namespace {namespace}")
    return problems


# --------------------------------------------------------------------------- (b) scrape port

# The predictor pod KServe and Knative make of an InferenceService in each deployment mode, and how
# a PodMonitor endpoint picks its targets, live in one place: tests/manifests/kserve_pod_shapes.py.
MODES = tuple(shapes.MODES)  # Serverless (Knative) and RawDeployment (Standard)


def predictor_pod(isvc: Mapping, mode: str) -> dict:
    """The predictor pod of ``isvc`` in KServe ``mode``, in the InferenceService's namespace."""
    if mode not in shapes.MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    pod = shapes.MODES[mode](copy.deepcopy(dict(isvc)))
    pod["metadata"]["namespace"] = (isvc.get("metadata") or {}).get("namespace")
    return pod


def scrape_port_problems(podmonitor: Mapping, pod: Mapping, mode: str) -> list[str]:
    """The PodMonitor selects the pod (labels and namespace) and scrapes it exactly once.

    Prometheus makes one target per declared container port and the operator keeps, per endpoint,
    the targets whose port matches; an endpoint whose port the pod lacks just finds nothing. So
    endpoints for both KServe modes may coexist, but exactly one target must result: none means no
    series (no alert can fire), two mean every counter is summed twice."""
    spec = podmonitor.get("spec") or {}
    who = f"{name_of(podmonitor)} ({mode} mode)"
    problems = []
    if not shapes.selects(spec.get("selector") or {}, pod["metadata"]["labels"]):
        problems.append(f"{who}: selector {spec.get('selector')} does not match the predictor pod's labels "
                        f"{pod['metadata']['labels']}")
    pm_ns = (podmonitor.get("metadata") or {}).get("namespace")
    ns_sel = spec.get("namespaceSelector") or {}
    pod_ns = pod["metadata"].get("namespace")
    if not ns_sel.get("any") and pod_ns not in (ns_sel.get("matchNames") or [pm_ns]):
        problems.append(f"{who}: watches namespace(s) {ns_sel.get('matchNames') or [pm_ns]}, the predictor "
                        f"runs in {pod_ns!r}")
    if problems:
        return problems
    targets = shapes.scrape_targets(dict(podmonitor), dict(pod))
    if not targets:
        wanted = [ep.get("port", ep.get("portNumber")) for ep in spec.get("podMetricsEndpoints") or []]
        ports = sorted((p.get("name") or "", p.get("containerPort")) for c in pod["spec"]["containers"]
                       for p in c.get("ports") or [])
        problems.append(f"{who}: no endpoint port {wanted} is a port of the predictor pod (its ports: {ports}): "
                        "nothing is scraped")
    elif len(targets) > 1:
        hits = ", ".join(f"podMetricsEndpoints[{i}] -> {name}:{port.get('name') or port.get('containerPort')}"
                         for i, name, port in targets)
        problems.append(f"{who}: the predictor is scraped {len(targets)} times ({hits}): every series is duplicated")
    return problems
