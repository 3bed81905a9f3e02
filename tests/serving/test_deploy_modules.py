"""The deploy code stays split along its seams (the 400-line limit: tests/serving/test_settings.py):
``serving.isvc`` builds and checks the InferenceService, ``serving.deploy`` applies it to a cluster.
Callers keep importing the building names from ``serving.deploy``; each is defined once."""

import inspect

from emoflow.serving import deploy, isvc


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
