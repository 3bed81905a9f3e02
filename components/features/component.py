from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def features(manifest: Input[Dataset], store: str, feature_config: dict, cache_key: str, assets: str,
             reuse_results: bool,
             featurized: Output[Dataset]) -> dict:
    """Log-mel features into the store, keyed by the hash of the feature config.

    `cache_key` (content of data and configuration) only feeds KFP's cache key; encoders come
    from the offline-asset mirror `assets` when not under $EMOFLOW_HOME."""
    from emoflow import steps
    from emoflow.assets import use_mirror

    use_mirror(assets)

    summary = steps.features(manifest.path, featurized.path, store, feature_config, reuse_results=reuse_results)
    featurized.metadata["config_hash"] = summary["config_hash"]
    return summary
