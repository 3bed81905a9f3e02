"""Work counters: what this process computed, and what it reused instead.

Counted where the work happens, process-wide:

- ``encoder_passes``: utterances forwarded through a frozen encoder (cached embeddings);
- ``encoder_loads``: frozen encoders loaded;
- ``logmel``: utterances whose log-mel was computed;
- ``asr``: utterances transcribed by an ASR backend;
- ``epochs``: training epochs run (every fold, ensemble member and final fit).

Reuse is counted under the same kind of unit (``logmel``, ``embeddings``, ``asr``, ``folds``,
``final_fits``). A pipeline step wraps its body in ``counting(step)`` and returns the delta in its
summary (``{"work": {...}, "reused": {...}}``). When ``$EMOFLOW_WORK_LOG`` names a folder (``emoflow
run`` sets one per run), the delta is also written there as one JSON file per step, because
kfp.local runs each task in its own process; ``total(folder)`` adds them up.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOG_ENV = "EMOFLOW_WORK_LOG"
DONE: Counter = Counter()
REUSED: Counter = Counter()

log = logging.getLogger("emoflow.work")


def add(kind: str, n: int = 1) -> None:
    """Count `n` units of work of `kind` done by this process."""
    DONE[kind] += n


def reused(kind: str, n: int = 1) -> None:
    """Count `n` units of `kind` reused instead of computed."""
    REUSED[kind] += n


def _delta(now: Counter, before: Counter) -> dict[str, int]:
    return {k: now[k] - before[k] for k in sorted(now) if now[k] - before[k]}


@contextmanager
def counting(step: str) -> Iterator[dict]:
    """Count the work of one step: the yielded dict receives ``work`` and ``reused`` (only kinds
    with a non-zero count) on exit, is logged, and is written to ``$EMOFLOW_WORK_LOG`` when set."""
    done, kept = Counter(DONE), Counter(REUSED)
    result: dict = {}
    yield result
    result.update(work=_delta(DONE, done), reused=_delta(REUSED, kept))
    log.info("%s: %s", step, describe(result))
    folder = os.environ.get(LOG_ENV)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{step}-{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"step": step, **result}))
        tmp.rename(path / f"{step}-{uuid.uuid4().hex[:12]}.json")


def total(folder: str | Path) -> dict:
    """Sum of the step records in a work-log folder: {"steps", "work", "reused"}."""
    work, kept, steps = Counter(), Counter(), 0
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        work.update(record.get("work") or {})
        kept.update(record.get("reused") or {})
        steps += 1
    return {"steps": steps, "work": dict(sorted(work.items())), "reused": dict(sorted(kept.items()))}


def describe(record: dict) -> str:
    """One line: 'work done: N encoder passes, M training epochs (...); reused: ...'."""
    work, kept = record.get("work") or {}, record.get("reused") or {}
    others = ", ".join(f"{k} {v}" for k, v in work.items() if k not in ("encoder_passes", "epochs"))
    line = (f"work done: {work.get('encoder_passes', 0)} encoder passes, {work.get('epochs', 0)} training epochs"
            + (f" ({others})" if others else ""))
    return line + "; reused: " + (", ".join(f"{k} {v}" for k, v in kept.items()) or "nothing")
