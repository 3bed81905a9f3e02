from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from emoflow.images import image


@dsl.component(base_image=image("train-gpu"), install_kfp_package=False)
def train_fold(
    manifest: Input[Dataset],
    store: str,
    arch: str,
    preset: str,
    fold: str,
    epochs: int,
    fold_scheme: str,
    n_folds: int,
    validation: str,
    validation_share: float,
    seed: int,
    cache_key: str,
    assets: str,
    reuse_results: bool,
    predictions: Output[Dataset],
) -> dict:
    """One fold of one architecture (train, select on validation, predict the test groups); no final fit.

    `cache_key` (content of data and configuration) only feeds KFP's cache key."""
    from emoflow import steps
    from emoflow.assets import use_mirror

    use_mirror(assets)  # encoders from the offline-asset mirror when not under $EMOFLOW_HOME

    summary = steps.train_fold(manifest.path, store, arch, preset, fold, predictions.path, epochs=epochs,
                               fold_scheme=fold_scheme, n_folds=n_folds,
                               validation=validation, validation_share=validation_share, seed=seed,
                               reuse_results=reuse_results)
    predictions.metadata.update({"arch": arch, "fold": fold, "run_key": summary["run_key"]})
    return summary
