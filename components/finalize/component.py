from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from emoflow.images import image


@dsl.component(base_image=image("train-gpu"), install_kfp_package=False)
def finalize(
    manifest: Input[Dataset],
    fold_predictions: Input[List[Dataset]],
    store: str,
    arch: str,
    preset: str,
    epochs: int,
    fold_scheme: str,
    n_folds: int,
    validation: str,
    validation_share: float,
    seed: int,
    feature_config: dict,
    cache_key: str,
    assets: str,
    reuse_results: bool,
    model: Output[Model],
    predictions: Output[Dataset],
) -> dict:
    """Merge the folds' predictions and fit the final model (median best epoch): the same outputs as train."""
    from emoflow import steps
    from emoflow.assets import use_mirror

    use_mirror(assets)  # encoders from the offline-asset mirror when not under $EMOFLOW_HOME

    work = model.path + ".work"
    summary = steps.finalize(manifest.path, store, arch, preset, [p.path for p in fold_predictions], work,
                             epochs=epochs, fold_scheme=fold_scheme, n_folds=n_folds,
                             validation=validation, validation_share=validation_share, seed=seed,
                             feature_config=feature_config, reuse_results=reuse_results)
    steps.publish_training(work, model.path, predictions.path)
    model.metadata.update({"arch": arch, "preset": preset, "framework": "pytorch"})
    return summary
