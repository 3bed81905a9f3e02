"""Serving settings, declared once: the ``ServingConfig`` dataclass, and the command-line flags
generated from its fields (``add_arguments``) and read back (``ServingConfig.from_args``).

Each field is one flag ``--<field>``: its type and default come from the field, its help text
(and choices) from the field's metadata; a bool field becomes ``--<field>/--no_<field>``. KServe's
own flags (``--model_name``, ``--http_port``, ...) come from ``kserve.model_server.parser``, which
``emoflow.serving.__main__`` uses as an argparse parent, as KServe's model servers do.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field

from emoflow.audiofile import DecodeLimits

SPEAKER_NORM = ("auto", "on", "off")


def default_torch_threads() -> int:
    """Intra-op threads for CPU inference: half the cores (1 on a 2-core machine, leaving the other
    core to HTTP and decoding; more threads than that only contend with the event loop)."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _flag(default=dataclasses.MISSING, *, factory=None, help: str = "", choices=None):  # noqa: A002
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServingConfig:
    # where the model comes from and where the server listens (process settings)
    storage_uri: str = _flag(factory=lambda: os.environ.get("STORAGE_URI", "/mnt/models"),
                             help="model folder, s3:// version prefix, or registry://name@alias")
    store: str | None = _flag(None, help="artifact store URI for registry:// references")
    host: str = _flag(factory=lambda: os.environ.get("EMOFLOW_SERVE_HOST", "0.0.0.0"),
                      help="bind address (0.0.0.0 in a pod; use 127.0.0.1 on a workstation)")
    log_requests: bool = _flag(False, help="log every request (uvicorn access log and KServe timing lines); off "
                                           "by default: at hundreds of requests/s the lines cost more than a tiny model")
    malloc_arenas: int = _flag(2, help="glibc malloc arenas (0: leave glibc's default of 8 per core)")
    # request limits
    max_request_bytes: int = _flag(10 * 1024 * 1024, help="audio bytes per request (the body may carry "
                                                          "base64 + JSON: see max_body_bytes)")
    max_audio_seconds: float = _flag(30.0, help="longest audio clip accepted")
    min_audio_seconds: float = _flag(0.1, help="shortest audio clip accepted")
    max_instances: int = _flag(64, help="instances per request")
    max_text_chars: int = _flag(2000, help="characters of 'text' per instance")
    max_speaker_chars: int = _flag(200, help="characters of 'speaker' per instance")
    max_request_audio_seconds: float = _flag(300.0, help="decoded audio per request, summed over its instances "
                                                         "(from the headers, before decoding)")
    # memory in flight and slow clients (emoflow.serving.admission, emoflow.serving.edge)
    memory_budget_mb: float = _flag(2048.0, help="estimated memory of all requests in flight (bodies, decoded "
                                                 "audio, features, model activations); a request that does not "
                                                 "fit now gets 503 with Retry-After; 0: no limit")
    model_mb_per_audio_second: float = _flag(3.0, help="model activation memory per second of audio in a batch "
                                                       "(the admission estimate; A1 paper needs about 2.4 on CPU)")
    retry_after_s: int = _flag(1, help="Retry-After of a 503 when the memory budget is full")
    header_timeout_s: float = _flag(10.0, help="a request's headers must arrive within this (else 408, closed)")
    body_timeout_s: float = _flag(30.0, help="a request's body must arrive within this once its headers have "
                                             "(else 408, closed)")
    # batching and threads
    max_batch_size: int = _flag(16, help="instances per model batch")
    max_wait_ms: float = _flag(2.0, help="wait for more instances only while other requests are being decoded")
    torch_threads: int = _flag(factory=default_torch_threads,
                               help="intra-op threads for CPU inference (default: half the cores)")
    prep_threads: int = _flag(2, help="threads decoding audio and computing features")
    model_workers: int = _flag(2, help="batches run concurrently (CPU: cores / torch_threads is a good value)")
    fast_path: bool = _flag(True, help="a lone request is decoded and run in one thread hop")
    channels_last: bool = _flag(True, help="CPU convolutions in NHWC (about 2x faster)")
    device: str = _flag("auto", help="torch device (auto: CUDA when available)")
    asr_backend: str = _flag("none", help="ASR for requests without text: none, faster-whisper, pocketsphinx")
    # speech_emb models: per-speaker normalisation
    speaker_norm: str = _flag("auto", choices=SPEAKER_NORM,
                              help="speech_emb models: normalise per request speaker (auto: as the model was trained)")
    max_speakers: int = _flag(1000, help="speakers whose statistics are kept (least recently used evicted first)")
    min_speaker_utterances: int = _flag(5, help="utterances of a speaker before its statistics are used "
                                                "(strict until then)")
    speaker_memory_mb: float = _flag(64.0, help="memory cap of all speaker statistics")

    def __post_init__(self) -> None:
        if self.speaker_norm not in SPEAKER_NORM:
            raise ValueError(f"speaker_norm must be one of {SPEAKER_NORM}, got {self.speaker_norm!r}")

    @property
    def max_body_bytes(self) -> int:
        """Largest HTTP body accepted: the audio limit in base64 plus room for JSON and text."""
        return self.max_request_bytes * 4 // 3 + 64 * 1024

    @property
    def decode_limits(self) -> DecodeLimits:
        """The audio decoder's limits for one instance."""
        return DecodeLimits(max_seconds=self.max_audio_seconds, max_encoded_bytes=self.max_request_bytes,
                            max_samples=int(self.max_audio_seconds * 384000 * 2))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServingConfig:
        """The settings parsed by a parser that `add_arguments` filled."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One ``--<field>`` flag per ServingConfig field (defaults evaluated now: environment included)."""
    hints = typing.get_type_hints(ServingConfig)
    for f in dataclasses.fields(ServingConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = hints[f.name]
        help_text = f.metadata.get("help") or None
        if kind is bool:  # --name / --no_name (underscores, as every other flag here)
            parser.add_argument(f"--{f.name}", dest=f.name, action="store_true", default=default,
                                help=f"{help_text} (default: {'on' if default else 'off'})")
            parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS)
            continue
        kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        parser.add_argument(f"--{f.name}", type=kind, default=default, help=help_text,
                            choices=f.metadata.get("choices"))
    return parser
