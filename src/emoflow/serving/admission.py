"""Admission control: the predictor's memory in flight, across concurrent requests, stays within a
budget (``--memory_budget_mb``), and one request's decoded audio within ``--max_request_audio_seconds``.

Each request reserves its estimated peak memory before the memory is taken, and gives it back when
it has been answered:

- at the HTTP edge, before its body is read: ``BODY_COPIES`` x the declared body size (the body,
  the parsed JSON and the decoded audio bytes live at once);
- in the predictor, after parsing and before decoding: per instance, from the audio header alone
  (``emoflow.audiofile.probe``), the native-rate samples, the 16 kHz wave and its features
  (``DECODE_BYTES_PER_SECOND``) and the model's activations (``--model_mb_per_audio_second``).

A request that does not fit now gets 503 with ``Retry-After`` (``Overloaded``) instead of being
queued into an out-of-memory kill; one that could never fit, even alone, is the client's error
(``TooLarge``: 413 at the edge, 400 naming the total in the predictor). ``/v2/health/ready``
answers 503 while a one-clip request would not fit (``MemoryBudget.saturated``). Half a second
after the last reservation is given back (and nothing new arrived), a background thread returns
freed heap to the OS (glibc ``malloc_trim``), so the resident size falls back near its baseline
after a burst.

Exported on /metrics: ``emoflow_memory_in_flight_bytes``, ``emoflow_memory_budget_bytes`` and
``emoflow_admission_total{stage, outcome}`` (stage ``body``/``audio``; outcome ``admitted``,
``overloaded``, ``too_large``).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time

from emoflow.audiofile import AudioError, probe

log = logging.getLogger("emoflow.serving")

BODY_COPIES = 3
# a second of audio once decoded: the 16 kHz float32 wave, soxr's working copy, the log-mel frames
# and their batch copy
DECODE_BYTES_PER_SECOND = 16000 * 4 * 3
NATIVE_BYTES_PER_SAMPLE = 4            # the decoder's float32 mono buffer at the file's own rate
TRIM_DELAY_S = 0.5                    # idle this long after a burst: hand freed heap back to the OS

try:
    from prometheus_client import Counter, Gauge

    IN_FLIGHT = Gauge("emoflow_memory_in_flight_bytes", "Estimated memory reserved by requests in flight")
    BUDGET = Gauge("emoflow_memory_budget_bytes", "Memory budget of requests in flight (0: unlimited)")
    ADMISSION = Counter("emoflow_admission_total", "Admission decisions by stage and outcome",
                        ["stage", "outcome"])
except ValueError:  # module imported twice under two names: record nothing
    IN_FLIGHT = BUDGET = ADMISSION = None


class Overloaded(Exception):
    """The request does not fit the memory budget now: 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooLarge(ValueError):
    """The request could never fit the budget, even alone (the client's error)."""


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class MemoryBudget:
    """Bytes reserved by requests in flight (thread-safe: the predictor reserves on its threads)."""

    def __init__(self, limit_bytes: int, retry_after_s: int = 1, min_request_bytes: int = 0):
        self.limit = max(0, int(limit_bytes))    # 0: unlimited (still accounted)
        self.retry_after_s = max(1, int(retry_after_s))
        self.min_request_bytes = int(min_request_bytes)  # what a one-clip request needs (readiness)
        self.in_use = 0
        self.peak = 0
        self.admitted_bytes = 0   # total ever admitted
        self.counts = {"admitted": 0, "overloaded": 0, "too_large": 0}
        self._lock = threading.Lock()
        self._idle = threading.Event()     # set when the last reservation is given back
        self._trimmer: threading.Thread | None = None
        if IN_FLIGHT is not None:
            IN_FLIGHT.set_function(lambda: self.in_use)
            BUDGET.set(self.limit)

    def count(self, stage: str, outcome: str) -> None:
        self.counts[outcome] += 1
        if ADMISSION is not None:
            ADMISSION.labels(stage, outcome).inc()

    def acquire(self, nbytes: int, what: str, stage: str) -> int:
        """Reserve `nbytes` for `what` or raise TooLarge / Overloaded; returns the bytes reserved."""
        nbytes = max(0, int(nbytes))
        with self._lock:
            self._idle.clear()
            if self.limit and nbytes > self.limit:
                self.count(stage, "too_large")
                raise TooLarge(f"{what} needs about {nbytes / 2**20:.0f} MB, more than this server's whole "
                               f"memory budget of {self.limit / 2**20:.0f} MB; send less per request")
            if self.limit and self.in_use + nbytes > self.limit:
                self.count(stage, "overloaded")
                raise Overloaded(f"server busy: {what} needs about {nbytes / 2**20:.0f} MB and "
                                 f"{(self.limit - self.in_use) / 2**20:.0f} MB of the memory budget are free; "
                                 f"retry in {self.retry_after_s} s", self.retry_after_s)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
            self.admitted_bytes += nbytes
            self.count(stage, "admitted")
            return nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.in_use -= nbytes
            if self.in_use == 0:
                self._idle.set()
                if self._trimmer is None:
                    self._trimmer = threading.Thread(target=self._trim_when_idle, name="emoflow-trim", daemon=True)
                    self._trimmer.start()

    def _trim_when_idle(self) -> None:
        """Off the request path: TRIM_DELAY_S after the budget went idle (and still is), return the
        freed heap to the OS, so the resident size falls back after a burst."""
        while True:
            self._idle.wait()
            time.sleep(TRIM_DELAY_S)
            with self._lock:
                if self.in_use:  # a new burst began: wait for its end
                    self._idle.clear()
                    continue
                self._idle.clear()
            _malloc_trim()

    def saturated(self) -> bool:
        """A one-clip request would not fit now (readiness answers 503)."""
        return bool(self.limit) and self.in_use + self.min_request_bytes > self.limit


class Hold:
    """One request's reservations; `release` gives all of them back (idempotent)."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.bytes = 0

    def reserve(self, nbytes: int, what: str, stage: str) -> None:
        self.bytes += self.budget.acquire(nbytes, what, stage)

    def release(self) -> None:
        held, self.bytes = self.bytes, 0
        if held:
            self.budget.release(held)


def audio_cost(audio: bytes, config) -> tuple[float, int]:
    """(seconds, bytes) one instance's audio will take once decoded and run, from its header.
    Audio the header check refuses costs nothing here: preparing it fails with the reason."""
    try:
        info = probe(audio, config.decode_limits, name="audio")
    except AudioError:
        return 0.0, 0
    seconds = info.seconds if info.seconds is not None else config.max_audio_seconds
    native = int(seconds * info.rate) * NATIVE_BYTES_PER_SAMPLE
    per_second = DECODE_BYTES_PER_SECOND + config.model_mb_per_audio_second * 2**20
    return seconds, native + int(seconds * per_second)


def clip_bytes(config) -> int:
    """The estimate for one clip of the longest accepted length at 48 kHz (readiness threshold)."""
    seconds = config.max_audio_seconds
    per_second = DECODE_BYTES_PER_SECOND + config.model_mb_per_audio_second * 2**20
    return int(seconds * 48000 * NATIVE_BYTES_PER_SAMPLE + seconds * per_second)


def budget_for(config) -> MemoryBudget:
    return MemoryBudget(int(config.memory_budget_mb * 2**20), config.retry_after_s, clip_bytes(config))


def reserve_audio(hold: Hold, instances, config) -> None:
    """Check the request's total audio against ``max_request_audio_seconds`` and reserve its
    decoded cost (TooLarge, Overloaded). Text-only instances cost nothing here."""
    costs = [audio_cost(inst.audio, config) for inst in instances if inst.audio]
    seconds = sum(s for s, _ in costs)
    if seconds > config.max_request_audio_seconds:
        hold.budget.count("audio", "too_large")
        raise TooLarge(f"the request holds {seconds:.1f} s of audio in {len(costs)} instances, the limit is "
                       f"{config.max_request_audio_seconds:g} s per request; send fewer or shorter clips per request")
    if costs:
        hold.reserve(sum(b for _, b in costs), f"the request's {seconds:.1f} s of audio", "audio")
