"""S3Store specifics against the real SeaweedFS server: auth, buckets, prefixes, settings."""

from __future__ import annotations

import socket

import pytest

from emoflow.storage import S3Store, StoreAuthError, StoreConnectionError, StoreError, open_store


def test_wrong_secret_fails_with_clear_auth_error(s3_server, s3_store):
    s3_store.put_bytes("secret-test.txt", b"data")
    wrong = "not-the-" + s3_server.secret_key[:6]
    bad = open_store(s3_store.uri(), secret_key=wrong)
    for op in (lambda: bad.get_bytes("secret-test.txt"), lambda: bad.put_bytes("w.txt", b"x"), bad.list):
        with pytest.raises(StoreAuthError) as ei:
            op()
        msg = str(ei.value)
        assert s3_server.endpoint in msg and s3_server.bucket in msg
        assert wrong not in msg and s3_server.secret_key not in msg
    # Nothing was written with the wrong secret.
    assert s3_store.list() == ["secret-test.txt"]


def test_unknown_access_key_fails(s3_server, s3_store):
    bad = open_store(s3_store.uri(), access_key="nobody", secret_key=s3_server.secret_key)
    with pytest.raises(StoreAuthError, match="authentication failed"):
        bad.exists("x")


def test_missing_bucket_named_and_create(s3_server):
    name = "emoflow-missing-bucket"
    st = open_store(f"s3://{name}/p")
    with pytest.raises(StoreError, match=name) as ei:
        st.put_bytes("k", b"1")
    assert "create=True" in str(ei.value)
    st = open_store(f"s3://{name}/p", create=True)
    st.put_bytes("k", b"1")
    assert open_store(f"s3://{name}", create=True).list() == ["p/k"]  # create is idempotent


def test_prefixes_isolate_stores(s3_server):
    a, b = s3_server.store("iso/a"), s3_server.store("iso/ab")
    a.put_bytes("x", b"a")
    b.put_bytes("x", b"b")
    assert a.list() == ["x"] and b.list() == ["x"]
    assert a.get_bytes("x") == b"a"
    assert a.uri("x") == f"s3://{s3_server.bucket}/iso/a/x"
    assert a.uri() == f"s3://{s3_server.bucket}/iso/a"


def test_unreachable_endpoint_is_clear(s3_server):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    st = open_store("s3://bkt-x/p", endpoint=f"127.0.0.1:{port}", retries=0)
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}"):
        st.get_bytes("k")


def test_settings_from_env(monkeypatch, s3_server):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="AWS_SECRET_ACCESS_KEY"):
        open_store("s3://bkt-x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    for name in ("EMOFLOW_S3_ENDPOINT", "AWS_ENDPOINT_URL", "S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StoreError, match="EMOFLOW_S3_ENDPOINT"):
        open_store("s3://bkt-x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.delenv("EMOFLOW_S3_SECURE")
    monkeypatch.delenv("S3_USE_HTTPS")
    st = open_store("s3://bkt-x/pre/fix/")
    assert isinstance(st, S3Store)
    assert (st.endpoint, st.secure, st.prefix) == ("minio.example:9000", True, "pre/fix/")
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    assert open_store("s3://bkt-x").secure is False
    monkeypatch.setenv("S3_USE_HTTPS", "maybe")
    with pytest.raises(StoreError, match="S3_USE_HTTPS"):
        open_store("s3://bkt-x")
    with pytest.raises(StoreError, match="bucket"):
        open_store("s3:///key")
    with pytest.raises(StoreError, match="Bad_Bucket"):
        open_store("s3://Bad_Bucket/x", secure=False)
    with pytest.raises(StoreError, match="ftp"):
        open_store("s3://bkt-x", endpoint="ftp://host:1")


def _listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket the process listens on, from /proc."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and inode in inodes:  # LISTEN
                    addr, port = local.split(":")
                    if len(addr) == 8:
                        ip = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
                    else:
                        ip = "::1" if addr == "0" * 24 + "01000000" else addr
                    out.append((ip, int(port, 16)))
    return out


def test_server_listens_only_on_loopback_ports_we_chose(s3_server, s3_store):
    import os

    if not os.path.isdir(f"/proc/{s3_server.proc.pid}/fd"):
        pytest.skip("needs Linux /proc")
    socks = _listening_sockets(s3_server.proc.pid)
    assert socks, "weed listens on nothing?"
    assert {ip for ip, _ in socks} == {"127.0.0.1"}, socks
    assert {p for _, p in socks} <= set(s3_server.ports.values()), socks
    assert s3_server.port in {p for _, p in socks}
