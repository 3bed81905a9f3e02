"""Local deployment: the same predictor as on KServe, started as a background process.

The process outlives the pipeline step that starts it; its pid and log live in
``$EMOFLOW_HOME/serve/<port>.{pid,log}`` so ``emoflow serve --stop`` (or a new deploy on the same
port) can stop it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from emoflow.config import home


def _paths(port: int) -> tuple[Path, Path]:
    folder = home() / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{port}.pid", folder / f"{port}.log"


def reap_in_background(pid: int) -> None:
    """For a long-lived caller of `start_local_server`: reap the child when it exits (a zombie
    would keep answering kill(pid, 0), so a later stop would wait its whole timeout)."""
    def wait() -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    threading.Thread(target=wait, daemon=True).start()


def stop_local_server(port: int, timeout_s: float = 10.0) -> bool:
    """Stop the server this machine started on `port`; False when none was running."""
    pid_file, _ = _paths(port)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    pid_file.unlink(missing_ok=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            # reap it when it is our child (otherwise a zombie keeps answering kill(pid, 0))
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def wait_ready(url: str, model_name: str, timeout_s: float, proc: subprocess.Popen | None = None,
               log_file: Path | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text()[-3000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"predictor exited with code {proc.returncode} before becoming ready:\n{tail}")
        try:
            if httpx.get(f"{url}/v2/models/{model_name}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = log_file.read_text()[-3000:] if log_file and log_file.exists() else ""
    raise TimeoutError(f"predictor at {url} not ready after {timeout_s:.0f} s:\n{tail}")


def start_local_server(model_ref: str, store: str, *, host: str = "127.0.0.1", port: int = 8080,
                       model_name: str = "emoflow", timeout_s: float = 120.0, extra_args: list[str] | None = None) -> str:
    """Start (or restart) the predictor for `model_ref` (``name@alias``) and return its base URL."""
    stop_local_server(port)
    pid_file, log_file = _paths(port)
    storage_uri = model_ref if "://" in model_ref or model_ref.startswith("/") else f"registry://{model_ref}"
    cmd = [
        sys.executable, "-m", "emoflow.serving.predictor", "--model_name", model_name,
        "--storage_uri", storage_uri, "--store", store, "--host", host, "--http_port", str(port),
        *(extra_args or []),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    url = f"http://{host}:{port}"
    try:
        wait_ready(url, model_name, timeout_s, proc, log_file)
    except Exception:
        stop_local_server(port)
        raise
    return url
