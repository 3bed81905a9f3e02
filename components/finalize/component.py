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
    seed: int,
    feature_config: dict,
    cache_key: str,
    model: Output[Model],
    predictions: Output[Dataset],
) -> dict:
    """Merge the folds' predictions and fit the final model (median best epoch): the same outputs as train."""
    import os
    import shutil

    from emoflow import steps

    work = model.path + ".work"
    summary = steps.finalize(manifest.path, store, arch, preset, [p.path for p in fold_predictions], work,
                             epochs=epochs, fold_scheme=fold_scheme, n_folds=n_folds, seed=seed,
                             feature_config=feature_config)
    os.makedirs(model.path, exist_ok=True)
    shutil.copytree(os.path.join(work, "model"), os.path.join(model.path, "model"), dirs_exist_ok=True)
    shutil.copy(os.path.join(work, "train.json"), os.path.join(model.path, "train.json"))
    shutil.copy(os.path.join(work, "predictions.json"), predictions.path)
    shutil.rmtree(work)
    model.metadata.update({"arch": arch, "preset": preset, "framework": "pytorch"})
    return summary
