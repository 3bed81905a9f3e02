"""The utterance record and the JSON Lines manifest every pipeline step reads and writes."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Iterable, Iterator


@dataclass
class Utterance:
    id: str                      # unique within a manifest
    audio: str | None            # URI or path of the source audio (None for text-only corpora)
    text: str | None             # transcript (reference or ASR, see text_source)
    label: str | None            # emotion label after the corpus' label map
    speaker: str
    session: str                 # evaluation group (LOSO unit): session, speaker or speaker group
    corpus: str
    dialogue: str | None = None  # dialogue/conversation id, for context models
    start: float | None = None   # segment start/end in seconds within `audio` (None = whole file)
    end: float | None = None
    split: str | None = None     # official split (train/dev/test) where the corpus has one
    text_source: str | None = None  # "reference" or the ASR backend that produced `text`
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Utterance":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"utterance {data.get('id')!r}: unknown fields {sorted(unknown)}")
        missing = [f for f in ("id", "speaker", "session", "corpus") if data.get(f) in (None, "")]
        if missing:
            raise ValueError(f"utterance {data.get('id')!r}: missing required fields {missing}")
        return cls(**{k: data.get(k) for k in known if k in data})


class ManifestError(ValueError):
    pass


def write_manifest(target: str | Path | IO[str], utterances: Iterable[Utterance]) -> int:
    """Write utterances as JSON Lines (sorted keys, one record a line). Returns the count."""
    if isinstance(target, (str, Path)):
        with open(target, "w", encoding="utf-8") as f:
            return write_manifest(f, utterances)
    n = 0
    for utt in utterances:
        target.write(utt.to_json() + "\n")
        n += 1
    return n


def manifest_bytes(utterances: Iterable[Utterance]) -> bytes:
    buf = io.StringIO()
    write_manifest(buf, utterances)
    return buf.getvalue().encode("utf-8")


def iter_manifest(source: str | Path | IO[str]) -> Iterator[Utterance]:
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8") as f:
            yield from iter_manifest(f)
        return
    for lineno, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            yield Utterance.from_dict(json.loads(line))
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise ManifestError(f"manifest line {lineno}: {exc}") from exc


def read_manifest(source: str | Path | IO[str]) -> list[Utterance]:
    utts = list(iter_manifest(source))
    seen: set[str] = set()
    for u in utts:
        if u.id in seen:
            raise ManifestError(f"duplicate utterance id {u.id!r}")
        seen.add(u.id)
    return utts


def parse_manifest_bytes(data: bytes) -> list[Utterance]:
    return read_manifest(io.StringIO(data.decode("utf-8")))
