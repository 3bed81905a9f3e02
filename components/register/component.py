from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def register(
    models: Input[List[Model]],
    evaluations: Input[List[Dataset]],
    store: str,
    model_name: str,
    alias: str,
    winner_metric: str,
    promote_margin: float,
    run_id: str,
) -> dict:
    """Register the winning architecture's model; move the alias only when it earns it."""
    from emoflow import steps

    return steps.register(
        [m.path for m in models], [e.path for e in evaluations], store, model_name=model_name,
        alias=alias, winner_metric=winner_metric, promote_margin=promote_margin,
        run_id=run_id,
    )
