from kfp import dsl
from kfp.dsl import Dataset, Output

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def ingest(corpus: str, source: str, store: str, options: dict, manifest: Output[Dataset]) -> dict:
    """Validate a corpus and write its manifest; audio is copied into the store, bad items quarantined."""
    from emoflow import steps

    summary = steps.ingest(corpus, source, store, manifest.path, options)
    manifest.metadata.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    return summary
