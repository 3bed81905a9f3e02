"""Micro-batching: concurrent requests share batches, batches respect max_batch_size, a failing
batch fails all of its requests and nothing else, and a lone request never waits."""

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from emoflow.config import home
from emoflow.serving.local import reap_in_background, start_local_server, stop_local_server
from emoflow.serving.batcher import MicroBatcher
from emoflow.serving.predictor import EmotionPredictor
from emoflow.serving.settings import ServingConfig
from serving.serving_helpers import LABELS, b64, free_port, register_tiny_model, wav_bytes


# -- the batcher alone ---------------------------------------------------------------------------

def _run(coro):
    return asyncio.run(coro)


def test_concurrent_submissions_share_batches_and_respect_max_batch():
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        time.sleep(0.01)
        return [x * 10 for x in items]

    async def main():
        batcher = MicroBatcher(run_batch, max_batch=4, max_wait_ms=20)
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(30)))
        return batcher, results

    batcher, results = _run(main())
    assert results == [[i * 10] for i in range(30)]  # every waiter gets its own answer
    assert batcher.batches == len(sizes) < 30
    assert max(sizes) == 4 and sum(sizes) == 30
    assert batcher.largest == 4 and batcher.items == 30


def test_multi_instance_request_is_split_at_max_batch():
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        return list(items)

    async def main():
        return await MicroBatcher(run_batch, max_batch=3, max_wait_ms=0).submit(list(range(8)))

    assert _run(main()) == list(range(8))
    assert max(sizes) <= 3 and sum(sizes) == 8


def test_exception_reaches_every_waiter_of_its_batch_and_the_worker_goes_on():
    def run_batch(items):
        if "poison" in items:
            raise RuntimeError("model exploded")
        return [f"ok:{x}" for x in items]

    async def main():
        batcher = MicroBatcher(run_batch, max_batch=8, max_wait_ms=0)
        # the worker starts before the three submissions run, so it takes "first" alone; the
        # three are queued while that batch runs and form the next batch together
        first = asyncio.get_running_loop().create_future()
        batcher.queue = asyncio.Queue()
        batcher._ensure_worker()
        batcher.queue.put_nowait(("first", first))
        together = [asyncio.ensure_future(batcher.submit([x])) for x in ("a", "poison", "b")]
        out = await asyncio.gather(*together, return_exceptions=True)
        assert await first == "ok:first"
        after = await batcher.submit(["later"])
        return out, after, batcher

    out, after, batcher = _run(main())
    assert all(isinstance(e, RuntimeError) and "model exploded" in str(e) for e in out)  # all three waiters
    assert after == ["ok:later"]  # the worker kept serving
    assert batcher.batches == 3


def test_lone_request_does_not_wait_but_announced_ones_are_awaited():
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        return list(items)

    async def main():
        batcher = MicroBatcher(run_batch, max_batch=8, max_wait_ms=300)
        t0 = time.perf_counter()
        await batcher.submit([1])
        lone = time.perf_counter() - t0
        # a second request is announced (being decoded) when the first is queued: they share a batch
        batcher.incoming += 1

        async def late():
            await asyncio.sleep(0.05)
            batcher.incoming -= 1
            return await batcher.submit([3])

        res = await asyncio.gather(batcher.submit([2]), late())
        return lone, res

    lone, res = _run(main())
    assert lone < 0.15, f"a lone request waited {lone:.3f} s"
    assert res == [[2], [3]]
    assert sizes == [1, 2]


# -- the predictor: a failing batch, in process ----------------------------------------------------

def test_predictor_batch_failure_reaches_all_requests_then_recovers(tmp_path, monkeypatch):
    store = register_tiny_model(tmp_path)
    pred = EmotionPredictor("emoflow", "registry://emoflow@production", store=store,
                            config=ServingConfig(max_batch_size=8, max_wait_ms=50, fast_path=False))
    pred.load()
    body = {"instances": [{"audio": b64(wav_bytes(seconds=0.5)), "text": "hello"}]}
    real_forward = pred.runner.model.forward
    calls = []

    def failing_once(batch, mode="both"):
        calls.append(batch["logmel"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("simulated device fault")
        return real_forward(batch, mode=mode)

    monkeypatch.setattr(pred.runner.model, "forward", failing_once)

    async def main():
        first = await asyncio.gather(*(pred.predict(body) for _ in range(4)), return_exceptions=True)
        second = await pred.predict(body)
        return first, second

    first, second = asyncio.run(main())
    failed = [r for r in first if isinstance(r, RuntimeError)]
    assert failed and all("simulated device fault" in str(e) for e in failed)
    assert len(failed) == calls[0]  # exactly the requests of the failing batch
    assert second["predictions"][0]["label"] in LABELS
    pred._prep_pool.shutdown()
    pred._model_pool.shutdown()


# -- over real HTTP ----------------------------------------------------------------------------------

def _histogram(text: str, name: str) -> dict:
    out = {"buckets": {}}
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', line)
        if m:
            out["buckets"][float(m.group(1))] = float(m.group(2))
        m = re.match(rf"{name}_(count|sum) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


@pytest.mark.slow
def test_http_concurrent_requests_are_batched(tmp_path):
    store = register_tiny_model(tmp_path)
    port = free_port()
    url = start_local_server("emoflow@production", store, host="127.0.0.1", port=port,
                             extra_args=["--max_batch_size", "4", "--max_wait_ms", "50"])
    reap_in_background(int((home() / "serve" / f"{port}.pid").read_text()))
    try:
        before = _histogram(httpx.get(f"{url}/metrics").text, "emoflow_batch_size")
        assert before.get("count", 0) == 0
        body = {"instances": [{"audio": b64(wav_bytes(seconds=1.0, seed=1)), "text": "so what"}]}
        n = 24
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: client.post("/v1/models/emoflow:predict", json=body).status_code,
                                     range(n)))
        assert statuses == [200] * n
        hist = _histogram(httpx.get(f"{url}/metrics").text, "emoflow_batch_size")
        assert hist["sum"] == n                      # every instance ran exactly once
        assert hist["count"] < n                     # ... in fewer batches than requests
        assert hist["buckets"][1.0] < hist["count"]  # some batches held more than one request
        assert hist["buckets"][4.0] == hist["count"]  # none held more than max_batch_size
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    finally:
        stop_local_server(port)
