"""S3 store on the ``minio`` SDK (MinIO, SeaweedFS, AWS S3, ...).

Endpoint and credentials come from arguments or the environment, never from code:

- endpoint: ``EMOFLOW_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL``, else ``S3_ENDPOINT``
  ("host:port" or "http(s)://host:port"; a scheme decides https unless overridden)
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and optional ``AWS_SESSION_TOKEN``)
- https: ``EMOFLOW_S3_SECURE`` or ``S3_USE_HTTPS`` ("0"/"1"); default https unless the
  endpoint says ``http://``
- region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (default us-east-1)

A single S3 PUT (or a completed multipart upload) is atomic: readers never see a
partial object.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Callable, TypeVar

from .base import (
    TMP_MARKER,
    ObjectInfo,
    Store,
    StoreAuthError,
    StoreConnectionError,
    StoreError,
    StoreKeyError,
    check_key,
    check_prefix,
)

T = TypeVar("T")

_AUTH_CODES = {
    "AccessDenied",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
    "AllAccessDisabled",
}
_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_first(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise StoreError(f"{name}={value!r} is not a boolean (use 0/1, true/false)")


def s3_settings(
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    secure: bool | None = None,
    region: str | None = None,
) -> dict:
    """Resolve S3 connection settings from arguments, then environment; clear error if missing."""
    raw = endpoint or _env_first("EMOFLOW_S3_ENDPOINT", "AWS_ENDPOINT_URL", "S3_ENDPOINT")
    if not raw:
        raise StoreError(
            "no S3 endpoint configured: set EMOFLOW_S3_ENDPOINT (or AWS_ENDPOINT_URL / S3_ENDPOINT) "
            "to host:port of the object store"
        )
    scheme_secure = None
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        if scheme not in ("http", "https"):
            raise StoreError(f"S3 endpoint scheme {scheme!r} is not http or https")
        scheme_secure = scheme == "https"
    host = raw.rstrip("/")
    if not host or "/" in host:
        raise StoreError(f"S3 endpoint {host!r} must be host[:port] without a path")
    if secure is None:
        for name in ("EMOFLOW_S3_SECURE", "S3_USE_HTTPS"):
            if os.environ.get(name):
                secure = _parse_bool(name, os.environ[name])
                break
    if secure is None:
        secure = True if scheme_secure is None else scheme_secure
    access_key = access_key if access_key is not None else os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = secret_key if secret_key is not None else os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        raise StoreError(
            f"no S3 credentials for endpoint {host}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    return {
        "endpoint": host,
        "access_key": access_key,
        "secret_key": secret_key,
        "session_token": os.environ.get("AWS_SESSION_TOKEN") or None,
        "secure": secure,
        "region": region or _env_first("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
    }


class S3Store(Store):
    """Store under ``s3://bucket/prefix``. ``create=True`` creates the bucket when missing."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool | None = None,
        region: str | None = None,
        create: bool = False,
        retries: int = 2,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
    ):
        import certifi
        import urllib3
        from minio import Minio

        from minio.helpers import check_bucket_name

        if not bucket:
            raise StoreError("S3 store needs a bucket name (s3://bucket/prefix)")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise StoreError(f"invalid S3 bucket name {bucket!r} (3-63 chars: a-z, 0-9, '.', '-')") from None
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix + "/" if prefix else ""
        cfg = s3_settings(endpoint, access_key, secret_key, secure, region)
        self.endpoint = cfg["endpoint"]
        self.secure = cfg["secure"]
        self._access_key_id = cfg["access_key"]
        # Few, quick retries: a dead server fails in about a second, not half a minute.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        try:
            self.client = Minio(
                cfg["endpoint"],
                access_key=cfg["access_key"],
                secret_key=cfg["secret_key"],
                session_token=cfg["session_token"],
                secure=cfg["secure"],
                region=cfg["region"],
                http_client=http,
            )
        except ValueError as e:
            raise StoreError(f"bad S3 settings for endpoint {cfg['endpoint']}: {e}") from None
        if create:
            self.create_bucket()

    # -- helpers -------------------------------------------------------------------
    def _where(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3 endpoint {scheme}://{self.endpoint}, bucket {self.bucket!r}"

    def _call(self, what: str, fn: Callable[[], T], key: str | None = None) -> T:
        """Run one SDK call, turning SDK/network errors into clear StoreErrors."""
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        try:
            return fn()
        except S3Error as e:
            code = e.code or ""
            if code in ("NoSuchKey", "NoSuchObject") or (code == "ResourceNotFound" and key):
                raise StoreKeyError(key or "", self.uri()) from None
            if code == "NoSuchBucket":
                raise StoreError(
                    f"{what}: bucket {self.bucket!r} does not exist at {self._where()} "
                    "(open_store(uri, create=True) creates it)"
                ) from None
            if code in _AUTH_CODES or (e.response is not None and e.response.status == 403):
                raise StoreAuthError(
                    f"{what}: S3 authentication failed ({code}) at {self._where()} with access key id "
                    f"{self._access_key_id!r}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                ) from None
            raise StoreError(f"{what} failed at {self._where()}: {code}: {e.message}") from None
        except ServerError as e:
            raise StoreError(f"{what} failed at {self._where()}: server error {e.status_code}: {e}") from None
        except InvalidResponseError as e:
            raise StoreError(f"{what} failed at {self._where()}: invalid response: {e}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise StoreConnectionError(f"{what}: cannot reach {self._where()}: {e}") from None

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    # -- bucket --------------------------------------------------------------------
    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (concurrent creation is fine)."""
        from minio.error import S3Error

        if self._call("check bucket", lambda: self.client.bucket_exists(self.bucket)):
            return

        def make() -> None:
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as e:
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call("create bucket", make)

    # -- Store API -----------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes({key!r}) needs bytes, got {type(data).__name__}")
        name = self._name(key)
        data = bytes(data)
        self._call(
            f"put {key!r}", lambda: self.client.put_object(self.bucket, name, io.BytesIO(data), len(data)), key
        )

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        from minio.error import S3Error

        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes_if_absent({key!r}) needs bytes, got {type(data).__name__}")
        name = self._name(key)
        data = bytes(data)

        def put() -> bool:
            try:
                # The SDK's public put_object would turn this header into user metadata.
                self.client._put_object(self.bucket, name, data, headers={"If-None-Match": "*"})
                return True
            except S3Error as e:
                if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise

        return self._call(f"put-if-absent {key!r}", put, key)

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)

        def read() -> bytes:
            resp = self.client.get_object(self.bucket, name)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"get {key!r}", read, key)

    def put_file(self, key: str, local_path: str | Path) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(f"put_file({key!r}): local file {src} does not exist")
        name = self._name(key)
        self._call(f"put {key!r}", lambda: self.client.fput_object(self.bucket, name, str(src)), key)

    def get_file(self, key: str, local_path: str | Path) -> Path:
        name = self._name(key)
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")

        def fetch() -> None:
            resp = self.client.get_object(self.bucket, name)
            try:
                with open(tmp, "wb") as f:
                    for chunk in resp.stream(_CHUNK):
                        f.write(chunk)
            finally:
                resp.close()
                resp.release_conn()

        try:
            self._call(f"get {key!r}", fetch, key)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except StoreKeyError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        full = self.prefix + prefix

        def names() -> list[str]:
            out = []
            for obj in self.client.list_objects(self.bucket, prefix=full or None, recursive=True):
                if obj.is_dir or TMP_MARKER in obj.object_name:
                    continue
                out.append(obj.object_name[len(self.prefix):])
            return out

        return sorted(self._call(f"list {prefix!r}", names))

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        st = self._call(f"stat {key!r}", lambda: self.client.stat_object(self.bucket, name), key)
        mtime = st.last_modified.timestamp() if st.last_modified else 0.0
        return ObjectInfo(key=key, size=int(st.size or 0), mtime=mtime, etag=(st.etag or "").strip('"'))

    def delete(self, key: str, missing_ok: bool = False) -> None:
        name = self._name(key)
        if not missing_ok:
            self.stat(key)  # S3 deletes of missing keys succeed silently; say so instead
        self._call(f"delete {key!r}", lambda: self.client.remove_object(self.bucket, name), key)

    def uri(self, key: str = "") -> str:
        base = f"s3://{self.bucket}/{self.prefix}"
        return base + check_key(key) if key else base.rstrip("/")
