"""``python -m emoflow.serving``: serve a registered emoflow model over KServe's HTTP server.

Flags: KServe's own (``kserve.model_server.parser`` as an argparse parent: ``--model_name``,
``--http_port``, ...) and one per ServingConfig field (emoflow.serving.settings).
"""

from __future__ import annotations

import argparse
import logging
import os


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    from emoflow.serving.settings import add_arguments

    parser = argparse.ArgumentParser(parents=[model_server.parser], description="emoflow KServe predictor")
    return add_arguments(parser)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc malloc arenas (as MALLOC_ARENA_MAX does): with one arena per busy thread the
    server's resident memory creeps up under sustained concurrent load (fragmentation); with 2 it
    stays flat. No-op where MALLOC_ARENA_MAX is set or glibc is absent; True when applied."""
    if os.environ.get("MALLOC_ARENA_MAX") or arenas <= 0:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    from emoflow.serving.settings import ServingConfig

    args, _ = build_parser().parse_known_args(argv)
    config = ServingConfig.from_args(args)
    limit_malloc_arenas(config.malloc_arenas)  # before any worker thread allocates
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from emoflow.monitoring.metrics import default_metrics
    from emoflow.serving.predictor import EmotionPredictor
    from emoflow.serving.server import serve

    model = EmotionPredictor(args.model_name, config.storage_uri, store=config.store, config=config,
                             metrics=default_metrics())
    serve(model, host=config.host, port=args.http_port, log_requests=config.log_requests)


if __name__ == "__main__":
    main()
