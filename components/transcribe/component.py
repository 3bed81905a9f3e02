from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def transcribe(manifest: Input[Dataset], backend: str, store: str, assets: str, reuse_results: bool,
               transcribed: Output[Dataset]) -> dict:
    """Fill the text of each utterance: reference transcripts, or ASR (faster-whisper, pocketsphinx)."""
    from emoflow import steps
    from emoflow.assets import use_mirror

    use_mirror(assets)  # ASR models come from the offline-asset mirror when not in the image

    summary = steps.transcribe(manifest.path, transcribed.path, backend=backend, store=store,
                                 reuse_results=reuse_results)
    transcribed.metadata.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    return summary
