"""P5: drift alerts with a real Prometheus — time to alert after a shift, false alarms without one.

Run:  python benchmarks/bench_drift.py [--scale 20] [--rates 0.5,2] [--repeats 3] [--fa-days 2] [--windows 2000000]

Everything goes through the production rules (`emoflow.monitoring.rules`, the statistics of
`emoflow.monitoring.drift`) and the Debian `prometheus` / `promtool` binaries on 127.0.0.1.

1. Time to alert, end to end (a live Prometheus). A fake predictor — PredictionMetrics, the
   predictor's own metrics class, on prometheus_client's HTTP server — is driven at a fixed
   prediction rate per model, predictions drawn i.i.d. from the shares. Prometheus scrapes it and
   evaluates the rules; the bench polls /api/v1/alerts every 0.1 s. Time is compressed by
   `--scale` S: every duration of the production set-up (10m window, 30s rule interval, 15s
   scrape, 1m `for:`) is divided by S and every rate multiplied by S, so each window holds the
   same counts as in production; seconds are reported back in production time (× S). Per model:
   one window of the reference mix, then a shift; reported: predictions and (production) seconds
   from the first shifted prediction to `firing`. Scenarios (4-class IEMOCAP-like reference):
   "100 % sad" (issue 15 item 8) and "+20 points" (one emotion's share raised by 20 points, the
   others scaled down: the P5 target definition), each at every rate of `--rates` (production
   predictions/s); a control model never shifts (no alert expected).
2. False alarms (promtool test rules: Prometheus' rule engine, recording rules and the alert state
   machine with its `for:`). Stationary counter series — every 30 s (the rule interval; production
   scrapes every 15 s), a multinomial draw of Poisson(rate × 30 s) predictions from the reference —
   for `--fa-days` days per case; promtool evaluates the production rules every 30 s; the bench
   counts evaluations with the alert firing (ALERTS{alertstate="firing"}), the firing episodes, and
   the share of evaluations whose G-test score exceeds 2, 3, 4, 4.75 beside its nominal chi-square
   tail (calibration). Cases: 4-class at 0.2, 1, 5 predictions/s and 8-class (RAVDESS-like) at 1/s.
   The counts are read from promtool's report of expected-vs-got values (the expected values are
   deliberately impossible), in 6-hour chunks (promtool's query sample limit).
2b. Promtool covers days, not the 10^4+ windows a rate of 1 per 10,000 needs: the alert condition
   (enough predictions, score > threshold, PSI > floor) is also evaluated by the same formulas
   (drift.compute_batch, generated from drift.STATISTICS like the rules) on `--windows` independent
   stationary windows per case — each evaluation's window has exactly this distribution. An alarm
   needs `for:`/interval + 1 = 3 consecutive evaluations above, so alarms per 10,000 windows
   <= p × 20 evaluations per window × 10,000 / 3 (p: 95 % upper bound of the per-window share).
3. Update cost: µs per PredictionMetrics.observe (counters, histogram, drift window).

Targets (README P5): time to alert ≤ 300 predictions for the +20-point shift at 1 prediction/s,
≤ 1 false alarm per 10,000 windows, ≤ 20 µs per update.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from scipy.stats import chi2

from emoflow.monitoring import rules
from emoflow.monitoring.drift import compute_batch, g_threshold
from emoflow.monitoring.metrics import PredictionMetrics

IEMOCAP = {"neutral": 0.31, "happy": 0.30, "sad": 0.20, "angry": 0.19}
RAVDESS = {"neutral": 1 / 15, **{e: 2 / 15 for e in ("calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")}}
PRODUCTION = {"window": 600.0, "interval": 30.0, "scrape": 15.0, "for": 60.0}  # seconds
ALERT = "EmotionDistributionDrift"


def plus_points(ref: dict[str, float], emotion: str, points: float = 0.20) -> dict[str, float]:
    """Raise `emotion`'s share by `points`, scaling the other shares down proportionally."""
    rest = 1.0 - ref[emotion]
    return {k: (v + points if k == emotion else v * (rest - points) / rest) for k, v in ref.items()}


def ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"{name} not found: install the Debian package `prometheus` (apt-get install -y prometheus)")
    return path


# ---------------------------------------------------------------------------------------------
# 1. time to alert, live
# ---------------------------------------------------------------------------------------------

class Driver(threading.Thread):
    """Calls metrics.observe at a fixed rate with labels drawn from `shares` (switchable)."""

    def __init__(self, metrics: PredictionMetrics, model: str, shares: dict[str, float], rate: float, seed: int):
        super().__init__(daemon=True)
        self.metrics, self.model, self.rate = metrics, model, rate
        self.labels = list(shares)
        self.rng = np.random.default_rng(seed)
        self.set_shares(shares)
        self.sent = 0
        self.shift_at = 0  # `sent` when the shift happened
        self.fired_after: int | None = None  # predictions from the shift to `firing`
        self.stop = threading.Event()

    def set_shares(self, shares: dict[str, float]) -> None:
        p = np.array([shares[k] for k in self.labels])
        self.p = p / p.sum()

    def shift(self, shares: dict[str, float]) -> None:
        self.set_shares(shares)
        self.shift_at = self.sent

    def run(self) -> None:
        nxt = time.perf_counter()
        while not self.stop.is_set():
            label = self.labels[self.rng.choice(len(self.labels), p=self.p)]
            self.metrics.observe(self.model, "v1", label, 0.9, "audio+text")
            self.sent += 1
            nxt += 1.0 / self.rate
            time.sleep(max(0.0, nxt - time.perf_counter()))


def time_to_alert(scale: float, rates: list[float], repeats: int, seed: int, workdir: Path) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    w, iv, scrape, for_ = (PRODUCTION[k] / scale for k in ("window", "interval", "scrape", "for"))
    params = dict(drift_window=ms(w), interval=ms(iv), drift_for=ms(for_), share_for=ms(for_))
    (workdir / "rules.yml").write_text(rules.render_rules_file(**params))
    reg = CollectorRegistry()
    metrics = PredictionMetrics(reg, window=w)  # the in-process window = the rules' window
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=reg)
    config = {
        "global": {"scrape_interval": ms(scrape), "scrape_timeout": ms(min(scrape, 0.5)), "evaluation_interval": ms(iv)},
        "rule_files": [str(workdir / "rules.yml")],
        "scrape_configs": [{"job_name": "emoflow-predictor", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    prom = subprocess.Popen([binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                             "--log.level=warn"], stdout=open(workdir / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    api = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=5)
    scenarios = {"100% sad": {"sad": 1.0, "neutral": 0.0, "happy": 0.0, "angry": 0.0},
                 "+20 points sad": plus_points(IEMOCAP, "sad"), "no shift (control)": IEMOCAP}
    drivers: dict[str, tuple[str, float, Driver]] = {}
    try:
        deadline = time.time() + 30
        while True:
            try:
                if api.get("/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or prom.poll() is not None:
                raise RuntimeError(f"prometheus did not start:\n{(workdir / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        for i, name in enumerate(scenarios):
            for j, rate in enumerate(rates):
                for k in range(repeats):
                    model = f"m{i}r{j}x{k}"
                    metrics.set_reference(model, "v1", IEMOCAP)
                    drivers[model] = (name, rate, Driver(metrics, model, IEMOCAP, rate * scale, seed * 1000 + i * 100 + j * 10 + k))
        for _, _, d in drivers.values():
            d.start()
        warmup = 1.2 * w + 2 * iv
        print(f"  live: window {ms(w)}, rule interval {ms(iv)}, scrape {ms(scrape)}, for {ms(for_)} "
              f"(production / {scale:g}); {len(drivers)} models; {warmup:.0f} s of reference mix first", flush=True)
        time.sleep(warmup)
        early = [m for m, s in alert_states(api).items() if s]
        t_shift = time.perf_counter()
        for model, (name, _, d) in drivers.items():
            d.shift(scenarios[name])
        fired: dict[str, float] = {}
        pending: dict[str, float] = {}
        limit = t_shift + 2.5 * w + 2 * for_ + 4 * iv
        while time.perf_counter() < limit:
            now = time.perf_counter()
            for model, state in alert_states(api).items():
                if state and model not in pending:
                    pending[model] = now
                if state == "firing" and model not in fired:
                    fired[model] = now
                    d = drivers[model][2]
                    d.fired_after = d.sent - d.shift_at
            shifted = [m for m, (n, _, _) in drivers.items() if not n.startswith("no shift")]
            if all(m in fired for m in shifted):
                break
            time.sleep(0.1)
        control_alerts = [m for m, (n, _, _) in drivers.items() if n.startswith("no shift") and m in pending]
        out = []
        for model, (name, rate, d) in drivers.items():
            row = {"scenario": name, "rate": rate, "model": model, "alerted_before_shift": model in early}
            if model in fired:
                row.update(predictions=d.fired_after, seconds=(fired[model] - t_shift) * scale,
                           pending_s=(pending[model] - t_shift) * scale)
            else:
                row.update(predictions=None, seconds=None, pending_s=None,
                           watched_s=(time.perf_counter() - t_shift) * scale)
            out.append(row)
        if control_alerts:
            print(f"  (control models alerted: {control_alerts})")
        return out
    finally:
        for _, _, d in drivers.values():
            d.stop.set()
        server.shutdown()
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()


def alert_states(api: httpx.Client) -> dict[str, str]:
    states: dict[str, str] = {}
    for a in api.get("/api/v1/alerts").json()["data"]["alerts"]:
        if a["labels"]["alertname"] == ALERT:
            m = a["labels"]["model"]
            states[m] = "firing" if a["state"] == "firing" or states.get(m) == "firing" else a["state"]
    return states


# ---------------------------------------------------------------------------------------------
# 2. false alarms, promtool over synthetic stationary series
# ---------------------------------------------------------------------------------------------

CALIBRATION = (2.0, 3.0, 4.0, 4.75)
CHUNK_S = 6 * 3600  # g_zscore thresholds whose exceedance is counted
FA_CASES = [("4-class", IEMOCAP, 0.2), ("4-class", IEMOCAP, 1.0), ("4-class", IEMOCAP, 5.0), ("8-class", RAVDESS, 1.0)]
GOT = re.compile(r"\{([^}]*)\} ([-+0-9.eE]+)")


def false_alarms(days: float, seed: int, workdir: Path) -> list[dict]:
    step = PRODUCTION["interval"]
    steps = int(days * 86400 / step)
    rng = np.random.default_rng(seed)
    series = []
    for c, (kind, ref, rate) in enumerate(FA_CASES):
        model = f"fa{c}"
        labels = list(ref)
        p = np.array([ref[k] for k in labels])
        n = rng.poisson(rate * step, size=steps)
        counts = np.cumsum(np.stack([rng.multinomial(k, p) for k in n]), axis=0)
        for j, e in enumerate(labels):
            lab = f'model="{model}",version="v1",emotion="{e}",pod="a"'
            series.append({"series": f"emoflow_reference_share{{{lab}}}", "values": f"{ref[e]!r}x{steps}"})
            series.append({"series": f"emoflow_predictions_total{{{lab}}}",
                           "values": "0 " + " ".join(map(str, counts[:, j].tolist()))})
    g = rules.drift_series(rules.DEFAULTS["drift_window"])["g_zscore"]
    firing = f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}'
    chunk = int(CHUNK_S // step)  # promtool's query sample limit: count chunk by chunk
    ends = list(range(chunk, steps + 1, chunk)) or [steps]
    sub = f"[{int(chunk * step)}s:{int(step)}s]"
    exprs = {
        "evaluations": f"count_over_time({g}{sub})",
        **{f"z>{z:g}": f"count_over_time(({g} > {z}){sub})" for z in CALIBRATION},
        "active": f'count_over_time(ALERTS{{alertname="{ALERT}"}}[{int(chunk * step)}s])',
        "firing": f"count_over_time({firing}[{int(chunk * step)}s])",
        # firing episodes: evaluations firing now and not one interval before
        "episodes": f"count_over_time(({firing} unless {firing} offset {int(step)}s){sub})",
    }
    impossible = [{"labels": "{}", "value": -1}]  # promtool then reports what it got
    checks = [(name, {"expr": e, "eval_time": f"{int(end * step)}s", "exp_samples": impossible})
              for end in ends for name, e in exprs.items()]
    tests = [{"interval": f"{int(step)}s", "input_series": series, "promql_expr_test": [c for _, c in checks]}]
    (workdir / "rules.yml").write_text(rules.render_rules_file())  # the production rules
    (workdir / "fa_test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": f"{int(step)}s",
                                                         "tests": tests}, width=1 << 30))
    t = time.perf_counter()
    out = subprocess.run([binary("promtool"), "test", "rules", "fa_test.yml"], capture_output=True, text=True,
                         cwd=workdir, timeout=1800)
    elapsed = time.perf_counter() - t
    report = out.stdout + out.stderr
    blocks = report.split("    expr:")[1:]
    if len(blocks) != len(checks) or "err:" in report:
        raise RuntimeError(f"unexpected promtool report:\n{report[-3000:]}")
    values: dict[str, dict[str, float]] = {name: {} for name in exprs}
    for (name, _), block in zip(checks, blocks):
        got = block.split("got:", 1)[1] if "got:" in block else ""
        for labels, value in GOT.findall(got):
            m = re.search(r'model="([^"]+)"', labels)
            key = m.group(1) if m else ""
            values[name][key] = values[name].get(key, 0.0) + float(value)
    rows = []
    for c, (kind, ref, rate) in enumerate(FA_CASES):
        model = f"fa{c}"
        row = {"case": f"{kind} at {rate:g}/s", "classes": len(ref), "days": days,
               "windows": days * 86400 / PRODUCTION["window"]}
        row.update({name: values[name].get(model, 0.0) for name in exprs})
        rows.append(row)
    print(f"  promtool: {steps} evaluations per case, {elapsed:.0f} s", flush=True)
    return rows


def exceedance(windows: int, seed: int) -> list[dict]:
    """Share of stationary windows where the alert condition holds, by the same formulas
    (drift.compute_batch) on `windows` independent windows per case: N ~ Poisson(rate x window),
    counts ~ multinomial(N, reference) — the marginal distribution of the window at any evaluation."""
    rng = np.random.default_rng(seed)
    p = rules.DEFAULTS
    rows = []
    for kind, ref, rate in FA_CASES:
        hits = 0
        for start in range(0, windows, 500_000):
            size = min(500_000, windows - start)
            n = rng.poisson(rate * PRODUCTION["window"], size=size)
            shares = np.array(list(ref.values()))
            counts = rng.multinomial(n, shares)
            v = compute_batch(counts, shares)
            hits += int(np.sum(v["enough"] & (v["g_zscore"] > p["zscore_threshold"]) & (v["psi"] > p["psi_threshold"])))
        rows.append({"case": f"{kind} at {rate:g}/s", "windows": windows, "hits": hits})
    return rows


def update_cost(n: int = 100_000) -> float:
    labels = list(RAVDESS)
    m = PredictionMetrics(CollectorRegistry())
    m.set_reference("bench", "v1", RAVDESS)
    t = time.perf_counter()
    for i in range(n):
        m.observe("bench", "v1", labels[i & 7], 0.8, "audio+text")
    return (time.perf_counter() - t) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=20.0, help="time compression of the live run")
    ap.add_argument("--rates", default="0.5,2", help="production predictions/s of the live models, comma-separated")
    ap.add_argument("--fa-days", type=float, default=2.0, help="simulated days per false-alarm case")
    ap.add_argument("--windows", type=int, default=2_000_000, help="independent windows per case for 2b (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="models per scenario and rate (independent draws)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-fa", action="store_true")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    p = rules.DEFAULTS
    print(f"P5 drift alerts: {ALERT} = G-test score > {p['zscore_threshold']} and PSI > {p['psi_threshold']} "
          f"over {p['drift_window']}, for {p['drift_for']}, rules every {p['interval']}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_drift_") as tmp:
        if not args.skip_live:
            print("\n1. time to alert (live Prometheus, production seconds = bench seconds x scale)")
            rows = time_to_alert(args.scale, rates, args.repeats, args.seed, Path(tmp) / "live")
            groups: dict[tuple[str, float], list[dict]] = {}
            for r in rows:
                groups.setdefault((r["scenario"], r["rate"]), []).append(r)
            for (scenario, rate), rs in groups.items():
                early = sum(r["alerted_before_shift"] for r in rs)
                if scenario.startswith("no shift"):
                    alerted = sum(r["seconds"] is not None for r in rs) + early
                    print(f"  {scenario:<20} {rate:>4g}/s: {alerted} of {len(rs)} models alerted")
                    ok &= alerted == 0
                    continue
                done = [r for r in rs if r["seconds"] is not None]
                missed = len(rs) - len(done)
                if not done:
                    print(f"  {scenario:<20} {rate:>4g}/s: no alert in {len(rs)} models within {rs[0]['watched_s']:.0f} s")
                    ok = False
                    continue
                preds = sorted(r["predictions"] for r in done)
                secs = sorted(r["seconds"] for r in done)
                print(f"  {scenario:<20} {rate:>4g}/s: firing after median {statistics.median(preds):.0f} predictions "
                      f"(max {preds[-1]}), {statistics.median(secs):.0f} s (max {secs[-1]:.0f}) over {len(done)} models"
                      f"{f'; {missed} missed' if missed else ''}{f'; {early} alerted before the shift!' if early else ''}")
                ok &= not missed and not early
                if scenario.startswith("+20") and rate <= 1:
                    ok &= statistics.median(preds) <= 300
        if not args.skip_fa:
            print(f"\n2. false alarms (promtool, {args.fa_days:g} stationary days per case, rules every 30s)")
            (Path(tmp) / "fa").mkdir()
            for r in false_alarms(args.fa_days, args.seed, Path(tmp) / "fa"):
                n = r["evaluations"] or 1
                calib = ", ".join(f"z>{z:g} {r[f'z>{z:g}'] / n:.2e} ({chi2.sf(g_threshold(z, r['classes']), r['classes'] - 1):.1e})"
                                  for z in CALIBRATION)
                per10k = r["episodes"] * 10_000 / r["windows"]
                print(f"  {r['case']:<15} {r['evaluations']:.0f} evaluations, {r['windows']:.0f} windows: "
                      f"firing {r['firing']:.0f} evaluations in {r['episodes']:.0f} episodes = {per10k:.2f} per "
                      f"10,000 windows (95 % bound {3 * 10_000 / r['windows']:.1f} when 0)")
                print(f"    share of evaluations above each score, observed (chi-square tail): {calib}")
                ok &= per10k <= 1
    if not args.skip_fa and args.windows:
        evals_per_window = PRODUCTION["window"] / PRODUCTION["interval"]
        runs = PRODUCTION["for"] / PRODUCTION["interval"] + 1  # consecutive evaluations an alarm needs
        print(f"\n2b. alert condition on {args.windows:,} independent stationary windows per case (same formulas, "
              f"drift.compute_batch); an alarm needs {runs:.0f} consecutive evaluations, so alarms per 10,000 "
              f"windows <= p x {evals_per_window:.0f} x 10,000 / {runs:.0f}")
        for r in exceedance(args.windows, args.seed):
            p_hat = r["hits"] / r["windows"]
            p_hi = (r["hits"] + 3) / r["windows"] if r["hits"] == 0 else p_hat + 2 * (p_hat / r["windows"]) ** 0.5
            bound = p_hi * evals_per_window * 10_000 / runs
            print(f"  {r['case']:<15} {r['hits']} of {r['windows']:,} windows (p = {p_hat:.1e}, 95 % upper {p_hi:.1e}): "
                  f"<= {bound:.2f} false alarms per 10,000 windows")
            ok &= bound <= 1
    cost = update_cost()
    print(f"\n3. update cost: {cost:.2f} µs per PredictionMetrics.observe (target <= 20)")
    ok &= cost <= 20
    print("P5:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
