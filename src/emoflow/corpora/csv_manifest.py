"""Your own corpus as a CSV/TSV/JSONL manifest, and the synthetic demo corpus folder.

Generic manifest (adapter ``csv``). Expected layout::

    <root>/manifest.csv            (or manifest.tsv / manifest.jsonl; option ``manifest``)
        path,text,label,speaker,session
        wav/a.wav,Hello there.,happy,spk1,s1
    <root>/wav/a.wav               (audio paths are relative to <root>; any sub-folders)

Column names are configurable with ``columns`` (field -> column), e.g.
``{"path": "file", "label": "emotion"}``. Fields: ``path``, ``label`` and ``speaker`` are
required; ``text``, ``session`` (default: the speaker), ``id`` (default: the path without
its extension), ``split``, ``dialogue``, ``start``, ``end`` are optional; other columns go
to ``extra``. ``label_map`` maps raw labels to final ones (raw labels it does not map are
quarantined as ``unknown_label``); ``labels`` restricts the allowed final labels. Without
either, any non-empty label is accepted. The file must be UTF-8: a row with undecodable
bytes is quarantined (``undecodable_text``), as is a row with a missing field, an extra
field or a non-numeric start/end (``bad_row``). Paths may not leave <root>.

Demo corpus (adapter ``demo``), as written by :mod:`emoflow.corpora.synthetic`::

    <root>/manifest.jsonl          (one Utterance record a line, audio relative to <root>)
    <root>/wav/S1_m3_0007.wav
"""

from __future__ import annotations

import csv
import io
import json

from emoflow.corpora.base import Adapter, CorpusError, ItemError, Scan, Source, check_text
from emoflow.corpora.record import Utterance

FIELDS = ("id", "path", "text", "label", "speaker", "session", "split", "dialogue", "start", "end")
REQUIRED = ("path", "label", "speaker")
AUTO_NAMES = ("manifest.csv", "manifest.tsv", "manifest.jsonl")


class CsvManifestAdapter(Adapter):
    name = "csv"
    labels = ()
    option_defaults = {"manifest": None, "format": None, "columns": None, "label_map": None,
                       "labels": None, "delimiter": None, "corpus_name": "csv"}
    layout = "  manifest.csv|manifest.tsv|manifest.jsonl (path,text,label,speaker,session)\n  <audio files by relative path>"

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan()
        rel = options["manifest"] or next((n for n in AUTO_NAMES if src.exists(n)), None)
        if rel is None or not src.exists(rel):
            raise CorpusError(f"csv: manifest {rel or ' or '.join(AUTO_NAMES)} not found under {src.uri}")
        fmt = options["format"] or ("jsonl" if rel.endswith((".jsonl", ".ndjson")) else
                                    "tsv" if rel.endswith(".tsv") else "csv")
        if fmt not in ("csv", "tsv", "jsonl"):
            raise CorpusError(f"csv: format must be csv, tsv or jsonl, got {fmt!r}")
        cols = {f: f for f in FIELDS}
        unknown = sorted(set(options["columns"] or {}) - set(FIELDS))
        if unknown:
            raise CorpusError(f"csv: unknown field(s) {unknown} in columns; fields are {list(FIELDS)}")
        cols.update(options["columns"] or {})
        label_map = options["label_map"]
        allowed = options["labels"] or (sorted(set(label_map.values())) if label_map else None)
        scan.labels = tuple(allowed) if allowed else None
        text = src.read_bytes(rel).decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
        rows = self._rows_jsonl(text, rel, scan) if fmt == "jsonl" else self._rows_csv(
            text, rel, scan, cols, options["delimiter"] or ("\t" if fmt == "tsv" else ","))
        inverse = {v: k for k, v in cols.items()}
        for where, row in rows:
            try:
                utt = self._utterance(row, cols, inverse, label_map, options["corpus_name"], where)
            except ItemError as exc:
                scan.reject(_row_id(row, cols), where, exc.reason, exc.detail)
                continue
            scan.items.append(utt)
        if not scan.items and not scan.rejects:
            raise CorpusError(f"csv: manifest {rel} under {src.uri} has no rows")
        return scan

    @staticmethod
    def _rows_csv(text, rel, scan, cols, delimiter):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [f"{f} (column {cols[f]!r})" for f in REQUIRED if cols[f] not in header]
        if missing:
            raise CorpusError(f"csv: {rel} lacks required column(s) {', '.join(missing)}; header is {header}")
        out = []
        for row in reader:
            where = f"{rel}:{reader.line_num}"
            if None in row:
                scan.reject(None, where, "bad_row", f"{where}: more fields than the header ({len(header)})")
                continue
            if any(v is None for v in row.values()):
                scan.reject(None, where, "bad_row", f"{where}: fewer fields than the header ({len(header)})")
                continue
            out.append((where, row))
        return out

    @staticmethod
    def _rows_jsonl(text, rel, scan):
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{lineno}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                scan.reject(None, where, "bad_row", f"{where}: not JSON ({exc})")
                continue
            if not isinstance(row, dict):
                scan.reject(None, where, "bad_row", f"{where}: a JSON object is needed, got {type(row).__name__}")
                continue
            out.append((where, row))
        return out

    @staticmethod
    def _utterance(row, cols, inverse, label_map, corpus, where) -> Utterance:
        def get(field):
            v = row.get(cols[field])
            if v is None:
                return None
            if isinstance(v, (dict, list)):
                raise ItemError("bad_row", f"{where}: field {cols[field]!r} holds {type(v).__name__}, not a value")
            v = check_text(str(v), where).strip()
            return v or None

        for k, v in row.items():  # undecodable bytes anywhere in the row
            if isinstance(v, str):
                check_text(v, f"{where} column {k!r}")
        vals = {f: get(f) for f in FIELDS}
        for f in REQUIRED:
            if vals[f] is None:
                raise ItemError("bad_row", f"{where}: empty {f} (column {cols[f]!r})")
        nums = {}
        for f in ("start", "end"):
            if vals[f] is not None:
                try:
                    nums[f] = float(vals[f])
                except ValueError:
                    raise ItemError("bad_row", f"{where}: {f} {vals[f]!r} is not a number") from None
        label = vals["label"]
        if label_map is not None:
            if label not in label_map:
                raise ItemError("unknown_label", f"{where}: label {label!r} not in label_map {sorted(label_map)}")
            label = label_map[label]
        path = vals["path"]
        uid = vals["id"] or _path_id(path)
        extra = {k: v for k, v in row.items() if k not in inverse and k is not None}
        if label_map is not None:
            extra["raw_label"] = vals["label"]
        return Utterance(
            id=uid, audio=path, text=vals["text"], label=label, speaker=vals["speaker"],
            session=vals["session"] or vals["speaker"], corpus=corpus, dialogue=vals["dialogue"],
            start=nums.get("start"), end=nums.get("end"), split=vals["split"],
            text_source="reference" if vals["text"] is not None else None, extra=extra,
        )


def _path_id(path: str) -> str:
    """Default utterance id: the audio path without its extension."""
    return path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path


def _row_id(row: dict, cols: dict) -> str | None:
    """Best-effort id of a rejected row (id column, else the path without extension)."""
    rid, path = row.get(cols["id"]), row.get(cols["path"])
    if isinstance(rid, (str, int)) and str(rid).strip():
        return str(rid).strip()
    if isinstance(path, str) and path.strip():
        return _path_id(path.strip())
    return None


class DemoAdapter(Adapter):
    """The synthetic demo corpus: ``manifest.jsonl`` of Utterance records, audio relative to the root."""

    name = "demo"
    labels = ()
    option_defaults = {"manifest": "manifest.jsonl"}
    layout = "  manifest.jsonl (Utterance records; audio like wav/S1_m3_0007.wav)\n  wav/*.wav"

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan()
        rel = options["manifest"]
        if not src.exists(rel):
            raise CorpusError(f"demo: {rel} not found under {src.uri}; expected layout:\n{self.layout}")
        text = src.read_bytes(rel).decode("utf-8", errors="surrogateescape")
        for where, row in CsvManifestAdapter._rows_jsonl(text, rel, scan):
            try:
                for k, v in row.items():
                    if isinstance(v, str):
                        check_text(v, f"{where} field {k!r}")
                utt = Utterance.from_dict(row)
                if not utt.audio or not utt.label:
                    raise ItemError("bad_row", f"{where}: utterance {utt.id!r} has no audio or no label")
            except ItemError as exc:
                scan.reject(row.get("id"), where, exc.reason, exc.detail)
                continue
            except (ValueError, TypeError) as exc:
                scan.reject(row.get("id"), where, "bad_row", f"{where}: {exc}")
                continue
            scan.items.append(utt)
        if not scan.items and not scan.rejects:
            raise CorpusError(f"demo: {rel} under {src.uri} has no records")
        return scan
