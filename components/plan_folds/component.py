from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def plan_folds(manifest: Input[Dataset], arch: str, fold_scheme: str, n_folds: int, seed: int, validation: str,
               validation_share: float) -> List[dict]:
    """The per-fold fan-out's items: one {"arch", "fold"} per fold of the cross-validation plan.

    Each item carries its architecture, so the inner loop's tasks read both from their own loop
    item (kfp.local 2.17 replaces outer-loop items inside a nested ParallelFor)."""
    from emoflow import steps

    names = steps.plan_folds(manifest.path, fold_scheme=fold_scheme, n_folds=n_folds, seed=seed,
                             validation=validation, validation_share=validation_share)
    return [{"arch": arch, "fold": name} for name in names]
