"""images/ and emoflow.images, checked offline (no container engine here): every Dockerfile parses,
uses pinned base images, ends as a non-root user, copies only what it needs, keeps secrets and
weights out; .dockerignore keeps the context small; every image reference in the repository is
the one ``emoflow.images`` gives; ``make images`` (images/images.mk) builds exactly those tags.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import emoflow
from emoflow import images

REPO = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
# What an image may copy from the build context (paths relative to the repository root).
ALLOWED_SOURCES = {"pyproject.toml", "README.md*", "src", "images/requirements.lock"}
PINNED_TAG = re.compile(r"^\d+\.\d+\.\d+([-.][A-Za-z0-9._-]+)?$")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL", re.I)


# --------------------------------------------------------------------------- a small Dockerfile parser


class DockerfileError(ValueError):
    pass


@dataclass
class Instr:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    image: str  # resolved base image (or a previous stage's name)
    name: str | None
    instrs: list[Instr]


def parse_dockerfile(text: str) -> list[Instr]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile syntax)."""
    out, buf, start = [], "", None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if start is None:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1].rstrip() + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        if cmd.upper() not in INSTRUCTIONS:
            raise DockerfileError(f"line {start}: unknown instruction {cmd!r}")
        if cmd != cmd.upper():
            raise DockerfileError(f"line {start}: write instructions in upper case ({cmd!r})")
        if not args.strip():
            raise DockerfileError(f"line {start}: {cmd} without arguments")
        out.append(Instr(cmd.upper(), args.strip(), start))
        buf, start = "", None
    if buf:
        raise DockerfileError("file ends inside a line continuation")
    return out


def _substitute(value: str, variables: dict[str, str], line: int) -> str:
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise DockerfileError(f"line {line}: ${name} has no default")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def _arg(instr: Instr) -> tuple[str, str | None]:
    name, eq, default = instr.args.partition("=")
    return name.strip(), (default.strip().strip('"') if eq else None)


def stages_of(instrs: list[Instr]) -> list[Stage]:
    """Split into build stages, resolving FROM with the global ARG defaults."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr in instrs:
        if instr.cmd == "FROM":
            tokens = [t for t in instr.args.split() if not t.startswith("--platform")]
            if len(tokens) not in (1, 3) or (len(tokens) == 3 and tokens[1].upper() != "AS"):
                raise DockerfileError(f"line {instr.line}: FROM {instr.args!r} is not `image [AS name]`")
            image = _substitute(tokens[0], global_args, instr.line)
            stages.append(Stage(image, tokens[2] if len(tokens) == 3 else None, []))
        elif not stages:
            if instr.cmd != "ARG":
                raise DockerfileError(f"line {instr.line}: only ARG may come before the first FROM")
            name, default = _arg(instr)
            if default is not None:
                global_args[name] = default
        else:
            stages[-1].instrs.append(instr)
    if not stages:
        raise DockerfileError("no FROM")
    return stages


def _json_or_shell(args: str) -> list[str]:
    if args.startswith("["):
        value = json.loads(args)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DockerfileError(f"bad JSON array {args!r}")
        return value
    return shlex.split(args)


def copy_sources(instr: Instr) -> tuple[dict[str, str], list[str]]:
    """(flags, sources) of a COPY instruction."""
    tokens = _json_or_shell(instr.args)
    flags = {}
    while tokens and tokens[0].startswith("--"):
        key, _, value = tokens.pop(0)[2:].partition("=")
        flags[key] = value
    if len(tokens) < 2:
        raise DockerfileError(f"line {instr.line}: COPY needs a source and a destination")
    return flags, tokens[:-1]


DOCKERFILES = sorted({spec.dockerfile for spec in images.IMAGES.values()})


@pytest.fixture(scope="module")
def parsed() -> dict[str, list[Stage]]:
    return {path: stages_of(parse_dockerfile((REPO / path).read_text())) for path in DOCKERFILES}


def test_parser_rejects_broken_dockerfiles():
    with pytest.raises(DockerfileError, match="unknown instruction 'FORM'"):
        parse_dockerfile("FORM python:3.11.14-slim\n")
    with pytest.raises(DockerfileError, match="continuation"):
        parse_dockerfile("FROM python:3.11.14-slim\nRUN echo \\\n")
    with pytest.raises(DockerfileError, match=r"\$BASE has no default"):
        stages_of(parse_dockerfile("ARG BASE\nFROM ${BASE}\n"))
    with pytest.raises(DockerfileError, match="only ARG"):
        stages_of(parse_dockerfile("RUN true\nFROM python:3.11.14-slim\n"))


# --------------------------------------------------------------------------- Dockerfiles


def test_every_image_has_a_dockerfile_and_its_build_args(parsed):
    assert set(images.IMAGES) == {"base", "train-gpu", "serve", "serve-gpu"}
    for name, spec in images.IMAGES.items():
        stages = parsed[spec.dockerfile]
        declared = {_arg(i)[0] for s in stages for i in s.instrs if i.cmd == "ARG"}
        assert set(spec.build_args) <= declared, f"{name}: build args {spec.build_args} not declared"


def test_multi_stage_with_pinned_bases(parsed):
    for path, stages in parsed.items():
        assert len(stages) >= 2, f"{path}: not multi-stage"
        names = set()
        for stage in stages:
            if stage.image in names:
                continue  # built on an earlier stage
            ref = stage.image
            assert ref != "scratch"
            if "@sha256:" in ref:
                continue
            repo, _, tag = ref.rpartition(":")
            assert repo and "/" not in tag, f"{path}: base image {ref!r} has no tag"
            assert tag != "latest" and PINNED_TAG.match(tag), f"{path}: base image {ref!r} is not pinned to a version"
            if stage.name:
                names.add(stage.name)


def test_final_stage_runs_as_non_root(parsed):
    for path, stages in parsed.items():
        final = stages[-1].instrs
        users = [i for i in final if i.cmd == "USER"]
        assert users, f"{path}: the final stage sets no USER"
        user = users[-1].args.split(":")[0]
        assert user not in {"root", "0"}, f"{path}: final USER is {user}"
        after = [i.cmd for i in final[final.index(users[-1]) + 1:]]
        assert not set(after) & {"RUN", "COPY", "ADD", "USER"}, f"{path}: {after} after the final USER"


def test_copies_only_what_the_build_needs(parsed):
    for path, stages in parsed.items():
        stage_names = {s.name for s in stages if s.name}
        for stage in stages:
            assert not [i for i in stage.instrs if i.cmd == "ADD"], f"{path}: use COPY, not ADD"
            for instr in (i for i in stage.instrs if i.cmd == "COPY"):
                flags, sources = copy_sources(instr)
                if "from" in flags:
                    assert flags["from"] in stage_names, f"{path}:{instr.line} copies from unknown stage"
                    continue
                for src in sources:
                    assert src in ALLOWED_SOURCES, f"{path}:{instr.line}: COPY {src} (allowed: {sorted(ALLOWED_SOURCES)})"
                    if "*" not in src:
                        assert (REPO / src).exists(), f"{path}:{instr.line}: {src} does not exist"
                        assert not dockerignored(src), f"{path}:{instr.line}: {src} is excluded by .dockerignore"


def test_no_secrets_or_weights_in_images(parsed):
    for path, stages in parsed.items():
        for stage in stages:
            for instr in stage.instrs:
                if instr.cmd in {"ENV", "ARG"}:
                    names = re.findall(r"(\w+)=", instr.args) or [instr.args.split()[0]]
                    bad = [n for n in names if SECRET_NAME.search(n)]
                    assert not bad, f"{path}:{instr.line}: secret-like {instr.cmd} {bad}"
                if instr.cmd == "RUN":
                    text = instr.args.lower()
                    assert "emoflow.assets" not in text and "huggingface-cli" not in text, \
                        f"{path}:{instr.line}: model weights must not be baked into the image"
                    for cmd in re.findall(r"pip install[^&;|]*", instr.args):
                        assert "==" in cmd or " -c " in cmd, f"{path}:{instr.line}: unpinned `{cmd.strip()}`"


def test_hf_hub_offline_is_configurable(parsed):
    for path, stages in parsed.items():
        final = stages[-1].instrs
        args = dict(_arg(i) for i in final if i.cmd == "ARG")
        assert args.get("HF_HUB_OFFLINE") == "1", f"{path}: ARG HF_HUB_OFFLINE=1 missing in the final stage"
        env = " ".join(i.args for i in final if i.cmd == "ENV")
        assert "HF_HUB_OFFLINE=${HF_HUB_OFFLINE}" in env, f"{path}: ENV HF_HUB_OFFLINE not set from the ARG"


def test_torch_matches_the_project_pin(parsed):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d.split("==")[1] for d in deps if d.startswith("torch=="))
    for path, stages in parsed.items():
        versions = {_arg(i)[1] for s in stages for i in s.instrs if i.cmd == "ARG" and _arg(i)[0] == "TORCH_VERSION"}
        assert versions == {torch_pin}, f"{path}: TORCH_VERSION {versions} != pyproject torch=={torch_pin}"
    train = " ".join(i.args for s in parsed["images/train-gpu/Dockerfile"] for i in s.instrs)
    assert "https://download.pytorch.org/whl/cu130" in train and "CUDA_VARIANT=cu130" in train
    serve = " ".join(i.args for s in parsed["images/serve/Dockerfile"] for i in s.instrs)
    assert "cpu) variant=cpu" in serve and 'gpu) variant="${CUDA_VARIANT}"' in serve


def test_serve_image_health_and_entrypoint(parsed):
    final = parsed["images/serve/Dockerfile"][-1].instrs
    health = [i for i in final if i.cmd == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:8080/v2/health/ready" in health[0].args
    assert any(i.cmd == "EXPOSE" and i.args.split() == ["8080"] for i in final)
    entry = _json_or_shell(next(i for i in final if i.cmd == "ENTRYPOINT").args)
    assert entry == ["python", "-m", "emoflow.serving.predictor"]
    cmd = _json_or_shell(next(i for i in final if i.cmd == "CMD").args)
    # the image's default arguments and the InferenceService's must both parse with the predictor's CLI
    from emoflow.serving import deploy
    from emoflow.serving.__main__ import build_parser

    isvc_args = deploy.to_manifest(deploy.default_inference_service())["spec"]["predictor"]["containers"][0]["args"]
    for argv in (cmd, isvc_args):
        args, unknown = build_parser().parse_known_args(argv)
        assert unknown == [] and args.http_port == 8080 and args.storage_uri == "/mnt/models"
        assert args.model_name == "emoflow"


def test_requirements_lock_agrees_with_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = {}
    for line in (REPO / "images" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"lock line {line!r} is not name==version"
            lock[name.lower().replace("_", "-")] = version
    assert "torch" not in lock and "emoflow" not in lock
    for dep in deps:
        name, sep, version = dep.partition("==")
        key = name.strip().lower().replace("_", "-")
        if key == "torch" or not sep:
            continue
        assert lock.get(key) == version.strip(), f"images/requirements.lock pins {key}=={lock.get(key)}, pyproject {dep}"


# --------------------------------------------------------------------------- .dockerignore


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        regex = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                regex += ".*"
                i += 2
                if pat.startswith("/", i):
                    regex += "/?"
                    i += 1
            else:
                regex += "[^/]*" if pat[i] == "*" else "[^/]" if pat[i] == "?" else re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(f"^{regex}$")))
    return out


def dockerignored(path: str) -> bool:
    """Whether docker leaves ``path`` (relative, '/'-separated) out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in _dockerignore_patterns():
        if any(regex.match(p) for p in prefixes):  # a pattern matches a path or any parent of it
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small():
    assert (REPO / ".dockerignore").exists()
    for path in (".venv", ".venv/bin/python", ".git", ".git/config", ".emoflow", ".emoflow/assets/x",
                 "tests", "tests/conftest.py", "manifests/base/kustomization.yaml", "benchmarks/bench_drift.py",
                 "src/emoflow/__pycache__/x.pyc", "src/emoflow.egg-info/PKG-INFO", ".env", "shared"):
        assert dockerignored(path), f"{path} would be sent to the docker daemon"
    for path in ("pyproject.toml", "README.md", "src/emoflow/__init__.py", "src/emoflow/serving/predictor.py",
                 "images/requirements.lock"):
        assert not dockerignored(path), f"{path} is needed by the build but ignored"


# --------------------------------------------------------------------------- emoflow.images


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    monkeypatch.delenv(images.TAG_ENV, raising=False)
    return monkeypatch


def test_image_references(clean_env):
    assert images.image("base") == f"ghcr.io/your-org/emoflow-base:{emoflow.__version__}"
    assert images.all_images() == {n: f"ghcr.io/your-org/emoflow-{n}:{emoflow.__version__}"
                                   for n in ("base", "train-gpu", "serve", "serve-gpu")}
    clean_env.setenv(images.REGISTRY_ENV, "registry.example.org:5000/team/")
    clean_env.setenv(images.TAG_ENV, "0.2.0-rc1")
    assert images.image("serve-gpu") == "registry.example.org:5000/team/emoflow-serve-gpu:0.2.0-rc1"


@pytest.mark.parametrize("env, value, needle", [
    (images.REGISTRY_ENV, "https://ghcr.io/org", "not a valid image registry"),
    (images.REGISTRY_ENV, "GHCR.io/Org", "not a valid image registry"),
    (images.TAG_ENV, "latest", "latest is refused"),
    (images.TAG_ENV, "v1 beta", "not a valid image tag"),
    (images.TAG_ENV, "-x", "not a valid image tag"),
])
def test_bad_image_settings_are_named(clean_env, env, value, needle):
    clean_env.setenv(env, value)
    with pytest.raises(ValueError, match=needle):
        images.image("base")


def test_unknown_image_name(clean_env):
    with pytest.raises(KeyError, match="unknown image 'serve-tpu'"):
        images.image("serve-tpu")


def test_cli_prints_name_ref_lines(clean_env):
    env = {k: v for k, v in os.environ.items() if k not in (images.REGISTRY_ENV, images.TAG_ENV)}
    out = subprocess.run([sys.executable, "-m", "emoflow.images"], capture_output=True, text=True,
                         check=True, env=env, cwd=REPO).stdout
    assert out.splitlines() == [f"{n}={r}" for n, r in images.all_images().items()]
    bad = subprocess.run([sys.executable, "-m", "emoflow.images"], capture_output=True, text=True,
                         env={**env, images.TAG_ENV: "latest"}, cwd=REPO)
    assert bad.returncode == 2 and "latest is refused" in bad.stderr


def test_make_images_builds_exactly_the_configured_tags(clean_env, tmp_path):
    make = shutil.which("make")
    assert make, "make is needed for `make images`"
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in (images.REGISTRY_ENV, images.TAG_ENV)}
    proc = subprocess.run([make, "-s", "-f", "images/images.mk", "images", f"IMAGES_PYTHON={sys.executable}",
                           f"DOCKER={fake}"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = [" ".join(cmd[1:]) for cmd in images.build_commands()]
    assert log.read_text().splitlines() == expected
    for cmd in images.build_commands():
        assert (REPO / cmd[cmd.index("-f") + 1]).exists()


# --------------------------------------------------------------------------- one source of references


REF = re.compile(r"(?<![\w.-])([\w.:/-]*?/)?emoflow-(base|train-gpu|serve-gpu|serve)(?![\w-]):([A-Za-z0-9_][A-Za-z0-9_.-]*)")


def _repo_text_files():
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True,
                             text=True, check=True, cwd=REPO).stdout.splitlines()
        files = [REPO / p for p in out]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    for path in files:
        if path.is_file() and path.stat().st_size < 2_000_000:
            try:
                yield path, path.read_text()
            except UnicodeDecodeError:
                continue


def test_every_image_reference_in_the_repo_is_the_configured_one(clean_env):
    expected = images.all_images()
    seen = 0
    for path, text in _repo_text_files():
        if path.suffix == ".py" and "tests" in path.parts:
            continue  # tests build deliberate examples
        for m in REF.finditer(text):
            ref, name, tag = m.group(0), m.group(2), m.group(3)
            seen += 1
            where = path.relative_to(REPO)
            assert tag == images.tag(), f"{where}: {ref} is not tagged {images.tag()} (emoflow.images)"
            if path.suffix != ".md":  # docs may show another registry; manifests and code may not
                assert ref == expected[name], f"{where}: {ref} != {expected[name]} (emoflow.images)"
    assert seen >= 1  # at least the InferenceService manifest carries one


def test_reference_pattern_finds_stale_tags():
    text = "image: ghcr.io/your-org/emoflow-serve-gpu:0.0.9\nbase_image='ghcr.io/your-org/emoflow-base:0.1.0'"
    found = [(m.group(2), m.group(3)) for m in REF.finditer(text)]
    assert found == [("serve-gpu", "0.0.9"), ("base", "0.1.0")]
