"""The one place container image references come from.

Components (``@dsl.component(base_image=image("base"))``), the training tasks
(``image("train-gpu")``), the InferenceService (``image("serve-gpu")`` or ``image("serve")``)
and the manifests all use these references, so they always agree.

A reference is ``<registry>/emoflow-<name>:<tag>``:
- registry: ``$EMOFLOW_IMAGE_REGISTRY``, default ``ghcr.io/your-org`` (a placeholder: set it to
  the registry your cluster pulls from);
- tag: ``$EMOFLOW_IMAGE_TAG``, default the package version (``emoflow.__version__``).

``python -m emoflow.images`` prints ``name=ref`` lines (read by ``make images``);
``python -m emoflow.images --docker-build`` prints the ``docker build`` command of every image.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass, field

import emoflow

DEFAULT_REGISTRY = "ghcr.io/your-org"
REGISTRY_ENV = "EMOFLOW_IMAGE_REGISTRY"
TAG_ENV = "EMOFLOW_IMAGE_TAG"
PREFIX = "emoflow-"


@dataclass(frozen=True)
class ImageSpec:
    """How one image is built: its Dockerfile (relative to the repo root) and build arguments."""

    name: str
    dockerfile: str
    build_args: dict[str, str] = field(default_factory=dict)
    about: str = ""


# Build context is always the repository root.
IMAGES: dict[str, ImageSpec] = {
    "base": ImageSpec("base", "images/base/Dockerfile",
                      about="CPU library + components (ingest, transcribe, features, evaluate, register, deploy)"),
    "train-gpu": ImageSpec("train-gpu", "images/train-gpu/Dockerfile",
                           about="CUDA PyTorch build for the training tasks"),
    "serve": ImageSpec("serve", "images/serve/Dockerfile", {"DEVICE": "cpu"},
                       about="KServe predictor, CPU"),
    "serve-gpu": ImageSpec("serve-gpu", "images/serve/Dockerfile", {"DEVICE": "gpu"},
                           about="KServe predictor, CUDA"),
}

# Docker reference grammar, simplified: lowercase registry/path components, tag [\w][\w.-]{0,127}.
_REGISTRY_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def registry() -> str:
    """The image registry (and path), from ``$EMOFLOW_IMAGE_REGISTRY`` or the placeholder default."""
    value = os.environ.get(REGISTRY_ENV, "").strip().rstrip("/") or DEFAULT_REGISTRY
    if not _REGISTRY_RE.match(value):
        raise ValueError(f"{REGISTRY_ENV}={value!r} is not a valid image registry/path "
                         "(lowercase host[:port]/path, e.g. ghcr.io/my-org)")
    return value


def tag() -> str:
    """The image tag: ``$EMOFLOW_IMAGE_TAG`` or the package version."""
    value = os.environ.get(TAG_ENV, "").strip() or emoflow.__version__
    if not _TAG_RE.match(value):
        raise ValueError(f"{TAG_ENV}={value!r} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, ≤128 chars)")
    if value == "latest":
        raise ValueError(f"{TAG_ENV}=latest is refused: images are tagged with an explicit version")
    return value


def image(name: str) -> str:
    """Full reference of the image called ``name`` (one of :data:`IMAGES`)."""
    if name not in IMAGES:
        raise KeyError(f"unknown image {name!r}; known: {sorted(IMAGES)}")
    return f"{registry()}/{PREFIX}{name}:{tag()}"


def all_images() -> dict[str, str]:
    """``{name: reference}`` for every image, in build order."""
    return {name: image(name) for name in IMAGES}


def build_commands(builder: str = "docker") -> list[list[str]]:
    """The build command (argv) of every image; the build context is the repository root."""
    commands = []
    for name, spec in IMAGES.items():
        cmd = [builder, "build", "-f", spec.dockerfile]
        for key, value in spec.build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd += ["-t", image(name), "."]
        commands.append(cmd)
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emoflow.images", description=__doc__.split("\n")[0])
    parser.add_argument("--docker-build", action="store_true", help="print the docker build commands")
    parser.add_argument("--builder", default="docker", help="build tool for --docker-build (docker, podman)")
    args = parser.parse_args(argv)
    try:
        if args.docker_build:
            for cmd in build_commands(args.builder):
                print(shlex.join(cmd))
        else:
            for name, ref in all_images().items():
                print(f"{name}={ref}")
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
