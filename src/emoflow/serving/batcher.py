"""A generic micro-batcher for asyncio servers: concurrent requests' items are run together in
batches on worker threads (see MicroBatcher)."""

from __future__ import annotations

import asyncio

try:  # batch sizes run (lone requests on the predictor's fast path count as batches of 1)
    from prometheus_client import Histogram

    BATCH_SIZE = Histogram("emoflow_batch_size", "Instances per model batch run by the predictor",
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))
except ValueError:  # module imported twice under two names: record nothing
    BATCH_SIZE = None


class MicroBatcher:
    """Collects concurrent instances into batches of at most `max_batch` and runs up to `workers`
    batches at a time on the `executor` (a pool of `workers` threads).

    Batching is greedy: a batch is collected when a worker is free and takes whatever is queued,
    so a lone request never waits, and requests arriving while every worker is busy form the
    next batch. It waits up to `max_wait_ms` for more only while `incoming` (requests still being
    decoded, announced by the caller) is non-zero. An exception in a batch reaches every request
    of that batch and no other; the batcher goes on with the next one. No lock is held across
    batches.
    """

    def __init__(self, run_batch, max_batch: int, max_wait_ms: float, executor=None, observe=None,
                 workers: int = 1):
        self.run_batch = run_batch
        self.observe = observe   # called with each batch size (a metrics hook)
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.executor = executor
        self.workers = max(1, int(workers))
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self._tasks: set = set()
        self.incoming = 0        # requests announced but not yet submitted
        self.running = 0         # batches on worker threads now
        self.direct = 0          # requests on the idle fast path (see `run_alone`)
        self.batches = 0         # batches run so far
        self.items = 0           # instances run so far
        self.largest = 0         # largest batch so far

    def _ensure_worker(self) -> None:
        if self.queue is None:
            self.queue = asyncio.Queue()
        if self.worker is None or self.worker.done():  # first use, or the collector died: (re)start it
            self.worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, instances: list) -> list:
        """Queue `instances` and wait for their results (in order)."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in instances]
        for inst, fut in zip(instances, futures):
            self.queue.put_nowait((inst, fut))
        return list(await asyncio.gather(*futures))

    def idle(self) -> bool:
        """Nothing queued, running, being decoded or on the fast path."""
        return (self.running == 0 and self.incoming == 0 and self.direct == 0
                and (self.queue is None or self.queue.empty()))

    async def run_alone(self, fn, *args):
        """Fast path for a lone request: `fn(*args)` (decode and run as one job) on a worker
        thread, one thread hop instead of two. Callers use it only when `idle()`."""
        self.direct += 1
        self.batches += 1
        self.items += 1
        self.largest = max(self.largest, 1)
        if self.observe is not None:
            self.observe(1)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.direct -= 1

    def _drain(self, pending: list) -> None:
        while len(pending) < self.max_batch and not self.queue.empty():
            pending.append(self.queue.get_nowait())

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        pending = [await self.queue.get()]
        self._drain(pending)
        deadline = loop.time() + self.max_wait
        while len(pending) < self.max_batch and self.incoming > 0:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                pending.append(await asyncio.wait_for(self.queue.get(), timeout))
            except asyncio.TimeoutError:
                break
            self._drain(pending)
        return pending

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self.workers)
        while True:
            await free.acquire()  # collect only when a worker is free: meanwhile the queue fills
            try:
                pending = [(inst, fut) for inst, fut in await self._collect() if not fut.done()]  # drop cancelled
            except BaseException:
                free.release()
                raise
            if not pending:
                free.release()
                continue
            self.batches += 1
            self.items += len(pending)
            self.largest = max(self.largest, len(pending))
            if self.observe is not None:
                self.observe(len(pending))
            self.running += 1
            task = asyncio.get_running_loop().create_task(self._run(pending, free))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, pending: list, free: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [inst for inst, _ in pending])
            if len(results) != len(pending):
                raise RuntimeError(f"batch of {len(pending)} returned {len(results)} results")
        except Exception as exc:  # a server fault: every request of this batch gets it
            for _, fut in pending:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self.running -= 1
            free.release()
        for (_, fut), res in zip(pending, results):
            if not fut.done():
                fut.set_result(res)

