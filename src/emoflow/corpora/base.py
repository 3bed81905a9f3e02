"""What every corpus adapter shares: the corpus source (local folder or S3 prefix), the
scan result, the adapter base class and small parsing helpers.

An adapter only *reads the layout*: it lists files, parses label/transcript files and
file names, and returns candidate utterances whose ``audio`` is a path relative to the
corpus root. Decoding, duration/silence checks, copying and the quarantine bookkeeping
happen in :mod:`emoflow.corpora.validate` and :mod:`emoflow.corpora.ingest`.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoflow.corpora.record import Utterance


class CorpusError(ValueError):
    """The corpus as a whole cannot be read (wrong layout, missing label file, bad option)."""


class ItemError(ValueError):
    """One item is bad; ``reason`` is a short machine-readable code, the message the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def quarantine_entry(id: str | None, source: str, reason: str, detail: str) -> dict:
    """One quarantine record: {id, source, reason, detail}."""
    return {"id": id, "source": source, "reason": reason, "detail": detail}


def check_relpath(rel: str) -> str:
    """Normalise a corpus-relative path; raise ItemError("path_escape") if it could leave the root.

    Rejects absolute paths, drive letters, URIs, backslashes, NUL and any '..' segment.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise ItemError("path_escape", f"empty audio path {rel!r}")
    if "\x00" in rel or "\\" in rel:
        raise ItemError("path_escape", f"audio path {rel!r} contains a backslash or NUL")
    if rel.startswith("/") or "://" in rel or (len(rel) > 1 and rel[1] == ":"):
        raise ItemError("path_escape", f"audio path {rel!r} is absolute; paths must be relative to the corpus root")
    parts = rel.split("/")
    if ".." in parts:
        raise ItemError("path_escape", f"audio path {rel!r} goes above the corpus root ('..')")
    norm = posixpath.normpath(rel)
    if norm in (".", "") or norm.startswith("../"):
        raise ItemError("path_escape", f"audio path {rel!r} does not name a file inside the corpus root")
    return norm


class Source:
    """Read-only view of a corpus root: a local folder or an ``s3://bucket/prefix``."""

    uri: str

    def list(self, prefix: str = "") -> list[str]:  # sorted relative paths of files
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def item_uri(self, rel: str) -> str:
        raise NotImplementedError

    def local_path(self, rel: str, tmpdir: str) -> Path:
        """A local file holding ``rel`` (the file itself for local sources, a copy for S3)."""
        raise NotImplementedError

    def is_dir(self, rel: str) -> bool:
        return bool(self.list(rel.rstrip("/") + "/"))


class LocalSource(Source):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise CorpusError(f"corpus source folder {str(root)!r} does not exist or is not a folder")
        self.uri = str(self.root)
        self._files: list[str] | None = None

    def _all(self) -> list[str]:
        if self._files is None:
            out = []
            for dirpath, dirs, files in os.walk(self.root):
                dirs.sort()
                rel = os.path.relpath(dirpath, self.root)
                base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                out.extend(base + f for f in files)
            self._files = sorted(out)
        return self._files

    def list(self, prefix: str = "") -> list[str]:
        return [k for k in self._all() if k.startswith(prefix)]

    def _path(self, rel: str) -> Path:
        rel = check_relpath(rel)
        path = self.root.joinpath(*rel.split("/"))
        # A symlink may point outside the root even when the path text does not.
        real = Path(os.path.realpath(path))
        if real != self.root and self.root not in real.parents:
            raise ItemError("path_escape", f"{rel!r} resolves to {str(real)!r}, outside the corpus root {str(self.root)!r}")
        return path

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()

    def is_dir(self, rel: str) -> bool:
        try:
            return self._path(rel.rstrip("/")).is_dir()
        except ItemError:
            return False

    def read_bytes(self, rel: str) -> bytes:
        path = self._path(rel)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ItemError("missing_file", f"audio file {rel!r} not found under {self.uri}") from None

    def item_uri(self, rel: str) -> str:
        return self._path(rel).as_uri()

    def local_path(self, rel: str, tmpdir: str) -> Path:
        return self._path(rel)


class StoreSource(Source):
    """A corpus stored under an S3 (or any store) prefix, read through emoflow.storage."""

    def __init__(self, uri: str):
        from emoflow.storage import open_store

        self.uri = uri.rstrip("/")
        self.store = open_store(self.uri)
        self._files: list[str] | None = None
        self._set: set[str] = set()

    def _all(self) -> list[str]:
        if self._files is None:
            self._files = sorted(self.store.list())
            self._set = set(self._files)
            if not self._files:
                raise CorpusError(f"corpus source {self.uri!r} is empty or does not exist")
        return self._files

    def list(self, prefix: str = "") -> list[str]:
        return [k for k in self._all() if k.startswith(prefix)]

    def exists(self, rel: str) -> bool:
        rel = check_relpath(rel)
        self._all()
        return rel in self._set

    def read_bytes(self, rel: str) -> bytes:
        from emoflow.storage import StoreKeyError

        rel = check_relpath(rel)
        try:
            return self.store.get_bytes(rel)
        except StoreKeyError:
            raise ItemError("missing_file", f"audio file {rel!r} not found under {self.uri}") from None

    def item_uri(self, rel: str) -> str:
        return self.store.uri(check_relpath(rel))

    def local_path(self, rel: str, tmpdir: str) -> Path:
        rel = check_relpath(rel)
        dest = Path(tmpdir) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.store.get_file(rel, dest)
        return dest


def open_source(source: str | Path) -> Source:
    """Open a corpus root given as a local path, ``file://`` URI or ``s3://bucket/prefix``."""
    s = str(source)
    if s.startswith("s3://"):
        return StoreSource(s)
    if s.startswith("file:"):
        from urllib.parse import unquote, urlparse

        p = urlparse(s)
        if p.netloc not in ("", "localhost"):
            raise CorpusError(f"file URI {s!r} names a remote host; only local files are supported")
        return LocalSource(unquote(p.path))
    if "://" in s:
        raise CorpusError(f"unsupported corpus source {s!r} (use a folder path, file:// or s3://bucket/prefix)")
    return LocalSource(s)


@dataclass
class Scan:
    """What an adapter found. ``items`` have ``audio`` relative to the corpus root (or None
    for text-only corpora); ``rejects`` are quarantine entries found while parsing;
    ``excluded`` are utterances the corpus protocol leaves out ({id, source, label}), counted
    separately from quarantine; ``notes`` go to the summary as corpus notes."""

    items: list[Utterance] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    # Per-item validation settings an adapter may override (e.g. audio not required).
    audio_required: bool = True
    # Label set of this scan when options change it (else the adapter's ``labels``).
    labels: tuple[str, ...] | None = None

    def reject(self, id: str | None, source: str, reason: str, detail: str) -> None:
        self.rejects.append(quarantine_entry(id, source, reason, detail))

    def exclude(self, id: str, source: str, label: str, why: str = "label outside protocol") -> None:
        self.excluded.append({"id": id, "source": source, "label": label, "why": why})


class Adapter:
    """Base class: set ``name``, ``labels``, ``option_defaults`` and implement ``scan``."""

    name: str = ""
    labels: tuple[str, ...] = ()
    option_defaults: dict[str, Any] = {}
    layout: str = ""

    def options(self, options: dict | None) -> dict:
        """Defaults updated by ``options``; unknown option names are an error naming them."""
        opts = dict(self.option_defaults)
        unknown = sorted(set(options or {}) - set(opts))
        if unknown:
            raise CorpusError(
                f"corpus {self.name!r}: unknown option(s) {unknown}; known: {sorted(opts)}"
            )
        opts.update(options or {})
        return opts

    def scan(self, src: Source, options: dict) -> Scan:
        raise NotImplementedError

    def no_items_error(self, src: Source) -> CorpusError:
        return CorpusError(
            f"corpus {self.name!r}: nothing found under {src.uri}; expected layout:\n{self.layout}"
        )


def decode_text(data: bytes, what: str) -> str:
    """UTF-8 (BOM allowed) text or ItemError("undecodable_text") naming the byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 4]
        raise ItemError("undecodable_text", f"{what}: not UTF-8 at byte {exc.start} ({bad!r})") from None


def check_text(text: str, what: str) -> str:
    """Reject text with control characters (NUL etc.) or undecodable surrogates."""
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            raise ItemError("undecodable_text", f"{what}: undecodable byte 0x{o - 0xDC00:02x} in text {text!r}")
        if (o < 32 and ch not in "\t\n\r") or o == 0x7F:
            raise ItemError("bad_text", f"{what}: control character U+{o:04X} in text {text!r}")
    return text


def stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def ext(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


AUDIO_EXTS = ("wav", "flac", "mp3", "mp4", "m4a", "ogg", "opus", "aac", "webm")


def is_hidden(rel: str) -> bool:
    """macOS/editor junk (``._x.wav``, ``.DS_Store``) that no corpus means as data."""
    return any(part.startswith(".") for part in rel.split("/"))


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="emoflow-ingest-")


def named_files(src: "Source", scan: "Scan", prefix: str, pattern, extension: str, expected: str):
    """Yield (rel, uid, match) for the files directly under `prefix` whose stem matches `pattern`
    and whose extension is `extension`; anything else is rejected as bad_filename (hidden files are
    counted in the scan notes)."""
    for rel in src.list(prefix):
        if is_hidden(rel):
            scan.notes["ignored_hidden_files"] = scan.notes.get("ignored_hidden_files", 0) + 1
            continue
        uid = stem(rel)
        m = pattern.match(uid)
        if "/" in rel[len(prefix):] or not m or ext(rel) != extension:
            scan.reject(uid, rel, "bad_filename", f"{rel}: expected {expected}")
            continue
        yield rel, uid, m
