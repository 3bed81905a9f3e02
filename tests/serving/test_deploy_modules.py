"""The deploy code stays split along its seams (issue 15: no serving module over 400 lines):
``serving.isvc`` builds and checks the InferenceService, ``serving.deploy`` applies it to a cluster.
Callers keep importing the building names from ``serving.deploy``; each is defined once."""

import inspect
from pathlib import Path

import pytest

from emoflow.serving import deploy, isvc

SERVING = Path(__file__).resolve().parents[2] / "src" / "emoflow" / "serving"
LIMIT = 400


@pytest.mark.parametrize("module", ["deploy.py", "isvc.py"])
def test_deploy_modules_stay_under_the_line_limit(module):
    lines = len((SERVING / module).read_text().splitlines())
    assert lines <= LIMIT, f"serving/{module} has {lines} lines (limit {LIMIT}): split it along its seams"


def test_building_names_reexported_by_deploy_are_the_isvc_objects():
    reexported = [n for n in deploy.__all__ if n in vars(isvc)]
    assert {"build_inference_service", "to_manifest", "render_yaml", "unknown_fields", "normalize_storage_uri",
            "default_inference_service", "DEFAULT_GPU_NODE_SELECTOR", "DEFAULT_GPU_TOLERATIONS"} <= set(reexported)
    for name in reexported:
        assert getattr(deploy, name) is getattr(isvc, name), name
    # everything deploy.py lists is importable from it, and each function/class has one home
    for name in deploy.__all__:
        obj = getattr(deploy, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            home = isvc if name in vars(isvc) else deploy
            assert obj.__module__ == home.__name__, name
