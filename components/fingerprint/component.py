from kfp import dsl
from kfp.dsl import Dataset, Input

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def fingerprint(
    manifest: Input[Dataset],
    architectures: list,
    preset: str,
    feature_config: dict,
    epochs: int,
    fold_scheme: str,
    n_folds: int,
    seed: int,
) -> str:
    """Content key of data + configuration, passed to the cached steps so KFP's cache key follows content."""
    from emoflow import steps

    return steps.fingerprint(manifest.path, architectures=architectures, preset=preset,
                             feature_config=feature_config, epochs=epochs,
                             fold_scheme=fold_scheme, n_folds=n_folds, seed=seed)
