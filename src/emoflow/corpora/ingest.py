"""The ingest step: corpus folder or S3 prefix -> validated manifest + audio in the store.

    result = ingest("ravdess", "/data/ravdess", open_store("s3://emoflow/store"))
    result.manifest_key   # manifests/ravdess/<content-hash>/manifest.jsonl

Written under ``manifests/<corpus>/<content-hash>/``: ``manifest.jsonl`` (accepted
utterances), ``quarantine.jsonl`` ({id, source, reason, detail} per rejected item),
``excluded.jsonl`` (left out by the corpus protocol, e.g. IEMOCAP ``fru``) and
``summary.json`` (counts: in = accepted + quarantined; excluded counted apart). With
``copy_audio`` each audio file is stored once, content-addressed, as
``audio/<corpus>/<sha256[:2]>/<sha256>.<ext>`` in its source format; every key is checked
before writing, so a re-run writes the same manifest and uploads nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from emoflow.corpora.adapters import get_adapter
from emoflow.corpora.base import ItemError, open_source, quarantine_entry
from emoflow.corpora.record import Utterance, manifest_bytes
from emoflow.corpora.validate import IngestError, ValidationConfig, Validator, bad_share_error

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    utterances: list[Utterance]
    quarantine: list[dict]
    summary: dict
    manifest_key: str
    quarantine_key: str
    summary_key: str = ""
    excluded_key: str = ""
    excluded: list[dict] = field(default_factory=list)
    manifest_uri: str = ""
    uploaded: int = 0          # audio objects written by this run (0 on a re-run)
    written: list[str] = field(default_factory=list)  # every store key this run wrote


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _counts(values) -> dict:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def ingest(
    corpus: str,
    source: str,
    store,
    *,
    options: dict | None = None,
    copy_audio: bool = True,
    max_bad_share: float = 0.2,
    min_duration: float = 0.1,
    max_duration: float = 30.0,
    silence_dbfs: float = -60.0,
) -> IngestResult:
    """Read corpus ``corpus`` (an adapter name, see ``ADAPTERS``) from ``source`` (folder,
    file:// or s3://bucket/prefix), validate every utterance, copy (or reference) its audio
    and write manifest, quarantine, excluded list and summary into ``store`` (a Store or a
    store URI). Raises CorpusError for an unreadable layout and IngestError when more than
    ``max_bad_share`` of the utterances fail (the error names the worst reasons; quarantine
    and summary are still written under ``manifests/<corpus>/failed/<hash>/``).
    """
    if isinstance(store, str):
        from emoflow.storage import open_store

        store = open_store(store)
    adapter = get_adapter(corpus)
    opts = adapter.options(options)
    name = opts.get("corpus_name") or adapter.name
    src = open_source(source)
    scan = adapter.scan(src, opts)
    cfg = ValidationConfig(min_duration=min_duration, max_duration=max_duration,
                           silence_dbfs=silence_dbfs, audio_required=scan.audio_required)
    labels = scan.labels if scan.labels is not None else (adapter.labels or None)
    validator = Validator(src, cfg, set(labels) if labels else None)

    quarantine = list(scan.rejects)
    accepted: list[Utterance] = []
    written: list[str] = []
    stored: set[str] = set()
    uploaded = 0
    for n, utt in enumerate(scan.items, 1):
        if n % 1000 == 0:
            log.info("ingest %s: %d/%d checked, %d quarantined", name, n, len(scan.items), len(quarantine))
        try:
            good, fc = validator.validate(utt)
        except ItemError as exc:
            quarantine.append(quarantine_entry(utt.id, utt.audio or utt.extra.get("row") or utt.id, exc.reason, exc.detail))
            continue
        if fc is not None:
            if copy_audio:
                key = f"audio/{name}/{fc.sha256[:2]}/{fc.sha256}.{good.extra['format'] or 'bin'}"
                if key not in stored:
                    if not store.exists(key):
                        store.put_bytes(key, fc.data)
                        written.append(key)
                        uploaded += 1
                    stored.add(key)
                good = replace(good, audio=store.uri(key))
            else:
                good = replace(good, audio=src.item_uri(fc.rel))
        accepted.append(good)

    n_in = len(scan.items) + len(scan.rejects)
    summary = _summary(name, adapter.name, src.uri, n_in, accepted, quarantine, scan,
                       dict(copy_audio=copy_audio, max_bad_share=max_bad_share, min_duration=min_duration,
                            max_duration=max_duration, silence_dbfs=silence_dbfs, options=options or {}))
    files = {
        "manifest.jsonl": manifest_bytes(accepted),
        "quarantine.jsonl": _jsonl(quarantine),
        "excluded.jsonl": _jsonl(scan.excluded),
        "summary.json": (json.dumps(summary, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    }
    digest = hashlib.sha256(b"\0".join(files[k] for k in sorted(files))).hexdigest()[:16]

    problem = bad_share_error(name, n_in, quarantine, max_bad_share)
    if n_in == 0:
        problem = f"ingest of corpus {name!r}: no utterances left to ingest under {src.uri} ({len(scan.excluded)} excluded by protocol)"
    if problem:
        folder = f"manifests/{name}/failed/{digest}"
        for fname in ("quarantine.jsonl", "excluded.jsonl", "summary.json"):
            if not store.exists(f"{folder}/{fname}"):
                store.put_bytes(f"{folder}/{fname}", files[fname])
        raise IngestError(f"{problem}. Quarantine list: {store.uri(folder + '/quarantine.jsonl')}", summary, quarantine)

    folder = f"manifests/{name}/{digest}"
    for fname, data in files.items():
        key = f"{folder}/{fname}"
        if not store.exists(key):
            store.put_bytes(key, data)
            written.append(key)
    log.info("ingest %s: %d in = %d accepted + %d quarantined (%d excluded); %d audio uploaded -> %s",
             name, n_in, len(accepted), len(quarantine), len(scan.excluded), uploaded, folder)
    return IngestResult(
        utterances=accepted, quarantine=quarantine, summary=summary,
        manifest_key=f"{folder}/manifest.jsonl", quarantine_key=f"{folder}/quarantine.jsonl",
        summary_key=f"{folder}/summary.json", excluded_key=f"{folder}/excluded.jsonl",
        excluded=scan.excluded, manifest_uri=store.uri(f"{folder}/manifest.jsonl"),
        uploaded=uploaded, written=written,
    )


def _summary(name, adapter, source, n_in, accepted, quarantine, scan, settings) -> dict:
    by_sha = defaultdict(list)
    for u in accepted:
        if "sha256" in u.extra:
            by_sha[u.extra["sha256"]].append(u)
    duplicates = []
    for sha, utts in sorted(by_sha.items()):
        paths = sorted({u.extra["source_path"] for u in utts})
        if len(paths) > 1:
            duplicates.append({"sha256": sha, "files": paths, "ids": sorted(u.id for u in utts)})
    seconds = sum(u.extra.get("duration", 0.0) for u in accepted)
    return {
        "corpus": name,
        "adapter": adapter,
        "source": source,
        "in": n_in,
        "accepted": len(accepted),
        "quarantined": len(quarantine),
        "excluded": len(scan.excluded),
        "found": n_in + len(scan.excluded),
        "quarantine_by_reason": _counts(q["reason"] for q in quarantine),
        "excluded_by_label": _counts(e["label"] for e in scan.excluded),
        "labels": _counts(u.label for u in accepted),
        "speakers": len({u.speaker for u in accepted}),
        "sessions": len({u.session for u in accepted}),
        "splits": _counts(u.split for u in accepted if u.split),
        "text_only": sum(1 for u in accepted if u.audio is None),
        "hours": round(seconds / 3600, 4),
        "sample_rates": _counts(u.extra["sample_rate"] for u in accepted if "sample_rate" in u.extra),
        "channels": _counts(u.extra["channels"] for u in accepted if "channels" in u.extra),
        "formats": _counts(u.extra["format"] for u in accepted if "format" in u.extra),
        "duplicate_audio": duplicates,
        "notes": scan.notes,
        "settings": settings,
    }
