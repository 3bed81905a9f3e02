"""The run configuration: every parameter of a training run, declared once.

Each :class:`Param` carries its name, type, default, help text and allowed values. Everything
that takes run parameters is derived from :data:`PARAMS`:

- the pipeline function's signature, defaults and parameter descriptions (``pipelines/training.py``),
  so the compiled YAML's ``root.inputDefinitions`` are exactly these;
- the ``emoflow run`` flags (``--gpu-count`` …) with their help;
- the YAML keys of a run-config file (``emoflow run --config``, ``submit``, ``schedule``,
  ``retrain-webhook``): unknown keys and badly typed values are refused, naming the key.

The defaults are the cluster defaults (what a run submitted to Kubeflow gets). A run is built in
layers, later ones winning: these defaults ← one or more config files (``emoflow run`` uses the
packaged ``demo`` config, :data:`CONFIG_DIR`/demo.yaml, when none is given) ← command-line flags.

Two defaults are fixed when the pipeline is compiled, from the same settings as the task images:
``serving_image`` (``$EMOFLOW_IMAGE_REGISTRY`` / ``$EMOFLOW_IMAGE_TAG``, see :mod:`emoflow.images`)
and ``image_pull_secrets`` (``$EMOFLOW_IMAGE_PULL_SECRETS``, comma-separated).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from emoflow.config import load_yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PULL_SECRETS_ENV = "EMOFLOW_IMAGE_PULL_SECRETS"
MAX_DEPLOY_TIMEOUT_S = 3 * 3600  # the deploy task's pod deadline is set above it

# Kubernetes names (RFC 1123 subdomain: Secrets, ServiceAccounts) and labels (RFC 1123 label:
# namespaces, InferenceService names)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes Toleration fields (core/v1 Toleration)
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


class RunConfigError(ValueError):
    """A run parameter or run-config file is invalid; the message names the bad key."""


def _pull_secrets_from_env() -> list[str]:
    return [s.strip() for s in os.environ.get(PULL_SECRETS_ENV, "").split(",") if s.strip()]


def _serving_image() -> str:
    from emoflow.images import image

    return image("serve-gpu")


# ---- value checks (return an error message, or None when the value is fine) ----

def _k8s_name(value: str, *, empty_ok: bool = False, label: bool = False) -> str | None:
    if value == "" and empty_ok:
        return None
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    if len(value) > (63 if label else 253) or not pattern.match(value):
        return f"{value!r} is not a valid Kubernetes name (lowercase letters, digits and '-')"
    return None


def _check_gpu_count(value: str) -> str | None:
    # the KFP backend parses it with resource.ParseQuantity; kfp.dsl's set_accelerator_limit
    # accepts only a non-negative integer
    return None if re.fullmatch(r"\d+", value) else f"must be a non-negative whole number as a string, got {value!r}"


def _check_node_selector(value: dict) -> str | None:
    # the driver unmarshals nodeSelectorJson into map[string]string: any non-string value fails the task
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    return f"labels must map strings to strings (quote numbers and booleans): {bad}" if bad else None


def _check_tolerations(value: list) -> str | None:
    for i, tol in enumerate(value):
        if not isinstance(tol, dict):
            return f"item {i} must be a mapping (a Kubernetes Toleration), got {type(tol).__name__}"
        unknown = sorted(set(tol) - _TOLERATION_KEYS)
        if unknown:
            return f"item {i} has unknown Toleration fields {unknown}; known: {sorted(_TOLERATION_KEYS)}"
    return None


def _check_pull_secrets(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str) or _k8s_name(item):
            return f"{item!r} is not a Secret name"
    return None


def _check_range(low: float, high: float | None = None) -> Callable[[Any], str | None]:
    def check(value):
        if value < low or (high is not None and value > high):
            return f"must be in [{low}, {high if high is not None else '∞'}], got {value}"
        return None

    return check


_ARCH_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # the architecture-folder naming rule of emoflow.models


def _check_arch_names(value: list) -> str | None:
    """Architecture names are checked here for form only: which ones exist is known to
    emoflow.models' discovery (a layer above this one), which the commands consult."""
    if not value:
        return "at least one architecture is needed"
    bad = [v for v in value if not isinstance(v, str) or not _ARCH_NAME.match(v)]
    return f"not architecture names: {bad!r}" if bad else None


@dataclass(frozen=True)
class Param:
    """One run parameter. ``default`` may be a zero-argument callable: a compile-time default."""

    name: str
    type: type
    default: Any
    help: str
    group: str
    choices: tuple = ()
    item_choices: tuple = ()  # allowed items of a list parameter
    check: Callable[[Any], str | None] | None = field(default=None, repr=False)
    flag: str = ""  # CLI flag; default --<name with dashes>

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def default_value(self) -> Any:
        value = self.default() if callable(self.default) else self.default
        return copy.deepcopy(value)

    @property
    def type_name(self) -> str:
        return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
                dict: "mapping"}[self.type]

    @property
    def _a(self) -> str:
        return "an" if self.type_name[0] in "aeiou" else "a"

    def validate(self, value: Any, where: str = "") -> Any:
        """The value in this parameter's type, or RunConfigError naming the parameter."""
        at = f"{where}: " if where else ""
        value = self._typed(value, at)
        if self.choices and value not in self.choices:
            raise RunConfigError(f"{at}{self.name}: {value!r} is not one of {list(self.choices)}")
        if self.item_choices:
            bad = [v for v in value if v not in self.item_choices]
            if bad or not value:
                raise RunConfigError(f"{at}{self.name}: items must be among {list(self.item_choices)} "
                                     f"(at least one), got {value!r}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise RunConfigError(f"{at}{self.name}: {problem}")
        return value

    def _typed(self, value: Any, at: str) -> Any:
        t = self.type
        if t is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `gpu_count: 2` in YAML means "2"
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
        raise RunConfigError(f"{at}{self.name} must be {self._a} {self.type_name}, got {type(value).__name__} {value!r}")

    def parse(self, text: str) -> Any:
        """A value given as text (a CLI flag, ``--param KEY=VALUE``), validated."""
        t = self.type
        try:
            if t is str:
                value: Any = text
            elif t is int:
                value = int(text)
            elif t is float:
                value = float(text)
            elif t is bool:
                low = text.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value = low in ("true", "1", "yes")
            elif t is list:
                value = json.loads(text) if text.lstrip().startswith("[") else \
                    [v.strip() for v in text.split(",") if v.strip()]
            else:
                value = json.loads(text)
        except ValueError:
            hint = {list: " (comma-separated or a JSON list)", dict: " (a JSON object)",
                    bool: " (true or false)"}.get(t, "")
            raise RunConfigError(f"{self.name} must be {self._a} {self.type_name}{hint}, got {text!r}") from None
        return self.validate(value)


def _p(name, type_, default, help_, group, **kw) -> Param:
    return Param(name, type_, default, help_, group, **kw)


PARAMS: tuple[Param, ...] = (
    # data
    _p("corpus", str, "demo", "corpus adapter: demo (synthetic, generated), iemocap, meld, mosei, ravdess, "
       "cremad, emodb, csv", "data",
       choices=("demo", "iemocap", "meld", "mosei", "ravdess", "cremad", "emodb", "csv")),
    _p("source", str, "", "corpus location: a folder or s3://bucket/prefix (empty for demo: generated)", "data"),
    _p("store", str, "s3://emoflow", "artifact store URI (s3://bucket/prefix on a cluster; `emoflow run` "
       "uses $EMOFLOW_STORE or $EMOFLOW_HOME/store unless a config or --store sets it)", "data"),
    _p("ingest_options", dict, {}, "corpus adapter options, e.g. {copy_audio: false} or, for demo, "
       "{demo: {sessions: 3}}", "data"),
    _p("transcribe_backend", str, "auto", "transcripts: auto (reference text, else ASR), reference, "
       "faster-whisper, pocketsphinx", "data", flag="--transcribe",
       choices=("auto", "reference", "faster-whisper", "pocketsphinx")),
    _p("feature_config", dict, {"n_mels": 128, "win_ms": 25, "hop_ms": 10, "sample_rate": 16000,
                                "normalize": "segment"},
       "log-mel settings and cached encoder outputs of the features step", "data"),
    _p("assets", str, "", "URI of the offline-asset mirror (e.g. s3://bucket/assets) that tasks and the "
       "predictor fetch missing encoder files from; empty: they must be under $EMOFLOW_HOME/assets", "data"),
    # training
    _p("architectures", list, ["a1"], "architectures to train, one branch each (built in: a1, a2, a3, a4; "
       "`emoflow models presets` lists every discovered one)", "training", check=_check_arch_names),
    _p("preset", str, "tiny", "preset name per architecture (demo, tiny, paper, offline, …; "
       "`emoflow models presets`) or a preset YAML path", "training"),
    _p("epochs", int, 0, "override the preset's epochs (0 = the preset's)", "training", check=_check_range(0)),
    _p("fold_scheme", str, "logo", "cross-validation: logo (leave one session out), speaker_groups, "
       "official (the corpus' own split)", "training", choices=("logo", "speaker_groups", "official")),
    _p("validation", str, "one_group", "validation part of each fold, carved from its training groups only "
       "(model selection, early stopping, A2's fusion weight): one_group (a whole training group: LOSO "
       "trains on 3 of 5 IEMOCAP sessions), fraction (a label-stratified validation_share of the training "
       "utterances: every non-test group trains), speaker (one training speaker), share (whole training "
       "speakers or dialogues, about validation_share); an official dev split is used as it is", "training",
       choices=("one_group", "fraction", "speaker", "share")),
    _p("validation_share", float, 0.1, "share of the training utterances in validation (validation "
       "fraction and share)", "training", check=lambda v: None if 0.0 < v < 1.0 else f"must be in (0, 1), got {v}"),
    _p("n_folds", int, 0, "folds for speaker_groups (0 = one per group)", "training", check=_check_range(0)),
    _p("seed", int, 0, "random seed of folds and training", "training"),
    _p("reuse_results", bool, True, "reuse results of earlier runs kept in the store (ASR, log-mel, encoder "
       "embeddings, training folds and final fits), keyed by content; false computes them again and "
       "replaces them", "training"),
    _p("fan_out_folds", bool, False, "one training task per fold (parallel GPU tasks on a cluster)", "training"),
    # registry
    _p("model_name", str, "emoflow", "registered model name", "registry"),
    _p("alias", str, "production", "production (register and promote) or candidate (promote only if "
       "better than production)", "registry", choices=("production", "candidate")),
    _p("winner_metric", str, "ua", "metric that picks the winning architecture and decides promotion: "
       "ua, wa, wf1; ml_wa (mean over emotions of the binary weighted accuracy, Makhmudov et al. 2024 "
       "Eq. 6) for a multi-label run (CMU-MOSEI protocol makhmudov2024)", "registry",
       choices=("ua", "wa", "wf1", "ml_wa")),
    _p("promote_margin", float, 0.0, "how much better than production a candidate must be to be promoted",
       "registry", check=_check_range(0.0)),
    # deploy
    _p("deploy_target", str, "kserve", "kserve (InferenceService), local (predictor on 127.0.0.1) or none",
       "deploy", flag="--deploy", choices=("kserve", "local", "none")),
    _p("serve_port", int, 8080, "port of the local predictor (deploy_target local)", "deploy", flag="--port",
       check=_check_range(1, 65535)),
    _p("namespace", str, "", "namespace of the InferenceService; empty = the namespace the pipeline's "
       "pods run in", "deploy", check=lambda v: _k8s_name(v, empty_ok=True, label=True)),
    _p("isvc_name", str, "emoflow", "InferenceService name", "deploy",
       check=lambda v: _k8s_name(v, label=True)),
    _p("serving_image", str, _serving_image, "predictor image of the InferenceService (default fixed at "
       "compile time from $EMOFLOW_IMAGE_REGISTRY / $EMOFLOW_IMAGE_TAG)", "deploy",
       check=lambda v: None if v.strip() else "must not be empty"),
    _p("image_pull_secrets", list, _pull_secrets_from_env, "Secrets for pulling the images, given to the "
       "InferenceService; every task pod gets the list fixed at compile time (default "
       f"${PULL_SECRETS_ENV}, comma-separated)", "deploy", check=_check_pull_secrets),
    _p("service_account", str, "emoflow-s3", "ServiceAccount of the predictor (its S3 credentials)", "deploy",
       check=_k8s_name),
    _p("canary_traffic_percent", int, -1, "share of traffic for a new revision (0-100; -1 = all at once)",
       "deploy", check=_check_range(-1, 100)),
    _p("deploy_timeout_s", int, 3600, "seconds to wait for the InferenceService to become ready (GPU "
       "node scale-up plus image pull)", "deploy", check=_check_range(1, MAX_DEPLOY_TIMEOUT_S)),
    # GPU placement of the training tasks (pod-spec fields: STRING for the KFP driver)
    _p("accelerator_type", str, "nvidia.com/gpu", "accelerator resource of the training tasks", "placement",
       check=lambda v: None if v.strip() else "must not be empty"),
    _p("gpu_count", str, "1", "accelerators per training task and for the GPU predictor (a whole number, "
       "as a string: the KFP driver reads pod-spec values as strings)", "placement", check=_check_gpu_count),
    _p("node_selector", dict, {}, "node labels of the training tasks and the GPU predictor, "
       "e.g. {nvidia.com/gpu.present: \"true\"}", "placement", check=_check_node_selector),
    _p("tolerations", list, [], "Kubernetes tolerations of the training tasks and the GPU predictor", "placement",
       check=_check_tolerations),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}


def names() -> list[str]:
    return [p.name for p in PARAMS]


def defaults() -> dict[str, Any]:
    """Every parameter's default (compile-time defaults evaluated now)."""
    return {p.name: p.default_value() for p in PARAMS}


def _refuse_unknown(unknown: list, where: str) -> None:
    if unknown:
        at = f"{where}: " if where else ""
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), BY_NAME, n=1, cutoff=0.75)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RunConfigError(f"{at}unknown run parameter {', '.join(hints)}; known: {', '.join(BY_NAME)}")


def validate(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check keys and values of a (partial) run config; return the typed values.

    Unknown keys and bad values raise RunConfigError naming the key (and `where`, e.g. a file)."""
    if not isinstance(values, Mapping):
        raise RunConfigError(f"{where or 'run config'} must be a mapping of parameter: value, "
                             f"got {type(values).__name__}")
    _refuse_unknown([k for k in values if k not in BY_NAME], where)
    return {k: BY_NAME[k].validate(v, where) for k, v in values.items()}


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A packaged config by name (``demo`` → CONFIG_DIR/demo.yaml) or a file path."""
    text = str(name_or_path)
    packaged = CONFIG_DIR / f"{text}.yaml"
    if os.sep not in text and "/" not in text and not text.endswith((".yaml", ".yml")) and packaged.is_file():
        return packaged
    path = Path(text).expanduser()
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise RunConfigError(f"run config {text!r} not found (a YAML file, or a packaged config: {known} "
                             f"in {CONFIG_DIR})")
    return path


def load(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The validated parameters of one run-config file (only the keys it sets)."""
    path = config_path(name_or_path)
    try:
        data = load_yaml(path)
    except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError: name the file
        raise RunConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate(data or {}, str(path))


def parse_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` texts (``--param``) as validated parameters; VALUE is read in KEY's type."""
    out = {}
    for text in pairs:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise RunConfigError(f"--param must be KEY=VALUE, got {text!r}")
        _refuse_unknown([key] if key not in BY_NAME else [], "--param")
        out[key] = BY_NAME[key].parse(raw)
    return out


def layered(*layers: tuple[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults overlaid by `layers`, each ``(source, validated values)``, later ones winning.

    Returns the values and, for each, where it came from ("default", a file, "flags")."""
    values, sources = defaults(), {name: "default" for name in BY_NAME}
    for source, layer in layers:
        for key, value in layer.items():
            values[key], sources[key] = value, source
    return values, sources


def given(configs: Iterable[str] = (), pairs: Iterable[str] = ()) -> dict[str, Any]:
    """Only the parameters a caller gave: config files in order, then ``KEY=VALUE`` pairs.

    What ``submit``, ``schedule`` and ``retrain-webhook`` pass to Kubeflow (which fills in the
    compiled defaults for the others)."""
    out: dict[str, Any] = {}
    for config in configs:
        out.update(load(config))
    out.update(parse_pairs(pairs))
    return out


# ---- the CLI side ----

def add_arguments(parser: argparse.ArgumentParser, preset_layer: tuple[str, Mapping[str, Any]] | None = None) -> None:
    """One flag per parameter, with its help; an absent flag leaves the value to the lower layers.

    `preset_layer` (name, values): a config applied when none is given, shown beside the defaults."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    layer_name, layer = preset_layer or ("", {})
    for p in PARAMS:
        group = groups.get(p.group) or groups.setdefault(p.group, parser.add_argument_group(f"{p.group} parameters"))
        extra = {list: " [comma-separated or JSON list]", dict: " [JSON object]", bool: " [true/false]"}.get(p.type, "")
        shown = "set at compile time" if callable(p.default) else json.dumps(p.default)
        if p.name in layer:
            shown += f"; {layer_name}: {json.dumps(layer[p.name])}"
        kwargs: dict[str, Any] = dict(dest=p.name, default=None, type=_flag_type(p),
                                      help=f"{p.help}{extra} (default {shown})".replace("%", "%%"),
                                      metavar="{" + ",".join(p.choices) + "}" if p.choices else p.name.upper())
        if p.type is bool:  # a bare `--fan-out-folds` means true
            kwargs.update(nargs="?", const=True)
        group.add_argument(p.cli_flag, **kwargs)


def _flag_type(p: Param) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return p.parse(text)
        except RunConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = p.type_name  # argparse names the type in its error message
    return convert


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters given as flags (already validated by argparse)."""
    return {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name, None) is not None}


def _pair_text(text: str) -> str:
    """argparse type of --param: checked at parse time, kept as text for :func:`given`."""
    try:
        parse_pairs([text])
    except RunConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` (repeatable) and ``--param KEY=VALUE`` (repeatable): the run's parameters for
    the commands that hand them to Kubeflow (read with :func:`given`)."""
    parser.add_argument("--config", action="append", default=[], metavar="RUN.yaml",
                        help=f"run-config YAML (keys: the run parameters, see `emoflow run --help`); "
                             f"repeatable, later files win; a name like `demo` means {CONFIG_DIR}/<name>.yaml")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", type=_pair_text,
                        help="one run parameter, VALUE read in the parameter's type (lists: comma-separated "
                             "or JSON; mappings: JSON); repeatable, wins over --config")


# ---- documentation ----

def docstring() -> str:
    """A Google-style "Args:" section: KFP puts these into the compiled parameters' descriptions."""
    lines = ["The emoflow training pipeline; parameters from emoflow.runconfig.", "", "Args:"]
    for p in PARAMS:
        lines.append(f"    {p.name}: {p.help}")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's parameter table."""
    rows = ["| parameter | flag | type | default | what |", "|---|---|---|---|---|"]
    for p in PARAMS:
        default = "compile time: " + ("`$EMOFLOW_IMAGE_REGISTRY/emoflow-serve-gpu:$EMOFLOW_IMAGE_TAG`"
                                      if p.name == "serving_image" else f"`${PULL_SECRETS_ENV}`") \
            if callable(p.default) else f"`{json.dumps(p.default)}`"
        what = p.help + (f" (one of {', '.join(p.choices)})" if p.choices and "," not in p.help else "")
        rows.append(f"| `{p.name}` | `{p.cli_flag}` | {p.type_name} | {default} | {what.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m emoflow.runconfig: the README's parameter table
    print(markdown_table())
