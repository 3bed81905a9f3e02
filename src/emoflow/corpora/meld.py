"""MELD (Multimodal EmotionLines Dataset): Friends dialogues, 7 emotions, official splits.

Expected layout (the corpus root holds the CSVs; any subset of the three splits)::

    <root>/train_sent_emo.csv
    <root>/dev_sent_emo.csv
    <root>/test_sent_emo.csv
    <root>/train_splits/dia{D}_utt{U}.mp4                 (optional media, raw release;
    <root>/dev_splits_complete/dia{D}_utt{U}.mp4           also found one level down as
    <root>/output_repeated_splits_test/dia{D}_utt{U}.mp4   train/train_splits, dev/..., test/...)

CSV columns: Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
Season, Episode, StartTime, EndTime. Emotions: neutral, joy, surprise, anger, sadness,
disgust, fear (kept as named; ``label_map`` may rename them).

Each split is text-only (``audio`` = None) when it has no media folder, or when
``media=False``; ``media`` may also map split -> folder. The audio is decoded from the
mp4 video with PyAV at validation/feature time. The official split is kept in ``split``;
utterances come out in dialogue order (split, Dialogue_ID, Utterance_ID) with
``dialogue`` = ``<split>_dia<D>`` which is also the evaluation group (``session``).
Protocols (option ``protocol``): ``official`` (default) keeps MELD's splits and 7 emotions;
``makhmudov2024`` is Makhmudov et al. 2024's: 6 emotions (fear excluded by protocol), the three
splits pooled and re-split 80/20 stratified by emotion (floor(0.8 n) of each emotion to train,
drawn with ``resplit_seed``: 10,676 / 2,674 on the full corpus, the paper's Table 1), with
``split`` = train / test and the official split kept in ``extra.official_split``
(see :mod:`emoflow.corpora.protocols`).
CSV text is read as UTF-8 (cp1252 if the file is not UTF-8) and typographic characters
that were double-encoded (``â€™`` for ``’``) are repaired; the summary counts repairs.
"""

from __future__ import annotations

import csv
import io

from emoflow.corpora.base import Adapter, CorpusError, Scan, Source
from emoflow.corpora.protocols import check_protocol, resplit
from emoflow.corpora.record import Utterance

SPLITS = ("train", "dev", "test")
MEDIA_DIRS = {
    "train": ("train_splits", "train/train_splits"),
    "dev": ("dev_splits_complete", "dev/dev_splits_complete"),
    "test": ("output_repeated_splits_test", "test/output_repeated_splits_test"),
}
EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
REQUIRED = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
MOJIBAKE_MARKS = ("â", "Ã", "Â")
# Makhmudov et al. 2024, Sec. 4.1.1: "anger, disgust, joy, sadness, surprise, and neutrality"
MAKHMUDOV2024_EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust")


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252/latin-1 (``â€™`` -> ``’``, ``\\x92`` -> ``’``)."""
    if any(m in text for m in MOJIBAKE_MARKS):
        for codec in ("cp1252", "latin-1"):
            try:
                return text.encode(codec).decode("utf-8")
            except UnicodeError:
                pass
    if any(0x80 <= ord(c) <= 0x9F for c in text):
        try:
            return text.encode("latin-1").decode("cp1252")
        except UnicodeError:
            pass
    return text


def parse_time(value: str | None) -> float | None:
    """'00:16:16,059' -> 976.059 (None when absent or malformed)."""
    try:
        hms, _, ms = (value or "").strip().partition(",")
        h, m, s = hms.split(":")
        return round(int(h) * 3600 + int(m) * 60 + int(s) + int(ms or 0) / 1000, 3)
    except ValueError:
        return None


class MeldAdapter(Adapter):
    name = "meld"
    labels = EMOTIONS
    option_defaults = {"media": "auto", "splits": None, "label_map": None, "protocol": "official",
                       "resplit_seed": 0}
    layout = (
        "  train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv\n"
        "  train_splits/, dev_splits_complete/, output_repeated_splits_test/ (optional: dia{D}_utt{U}.mp4)"
    )

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan(audio_required=False)
        protocol = check_protocol("meld", options["protocol"])
        label_map = options["label_map"] or {e: e for e in EMOTIONS}
        if protocol == "makhmudov2024":
            if options["label_map"] is not None:
                raise CorpusError("meld: protocol 'makhmudov2024' fixes the labels; leave label_map unset")
            label_map = {e: e for e in MAKHMUDOV2024_EMOTIONS}
        scan.labels = tuple(sorted(set(label_map.values())))
        splits = options["splits"] or SPLITS
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise CorpusError(f"meld: unknown split(s) {bad}; known: {list(SPLITS)}")
        found = [s for s in splits if src.exists(f"{s}_sent_emo.csv")]
        if not found:
            raise self.no_items_error(src)
        media = {}
        for split in found:
            media[split] = self._media_dir(src, split, options["media"])
        scan.notes["media"] = {s: media[s] or "text-only" for s in found}
        scan.notes["text_only"] = all(m is None for m in media.values())
        repaired = 0
        cp1252_files = []
        for split in found:
            rel = f"{split}_sent_emo.csv"
            data = src.read_bytes(rel)
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                text = data.decode("cp1252", errors="surrogateescape")
                cp1252_files.append(rel)
            reader = csv.DictReader(io.StringIO(text, newline=""))
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise CorpusError(f"meld: {rel} lacks column(s) {missing}; header is {reader.fieldnames}")
            rows = []
            for row in reader:
                where = f"{rel}:{reader.line_num}"
                if None in row or any(row.get(c) is None for c in REQUIRED):
                    scan.reject(None, where, "bad_row", f"{where}: wrong number of fields ({len(row)} columns)")
                    continue
                try:
                    d, u = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
                except ValueError:
                    scan.reject(None, where, "bad_row",
                                f"{where}: Dialogue_ID/Utterance_ID not integers ({row['Dialogue_ID']!r}, {row['Utterance_ID']!r})")
                    continue
                uid = f"{split}_dia{d}_utt{u}"
                utt_text = fix_mojibake(row["Utterance"].strip())
                repaired += utt_text != row["Utterance"].strip()
                speaker = fix_mojibake(row["Speaker"].strip())
                if not speaker:
                    scan.reject(uid, where, "bad_row", f"{where}: empty Speaker")
                    continue
                if not utt_text:
                    scan.reject(uid, where, "missing_text", f"{where}: empty Utterance")
                    continue
                raw = row["Emotion"].strip().lower()
                if protocol == "makhmudov2024" and raw in EMOTIONS and raw not in label_map:
                    scan.exclude(uid, where, raw, "not among the 6 emotions of protocol makhmudov2024")
                    continue
                if raw not in label_map:
                    scan.reject(uid, where, "unknown_label", f"{where}: emotion {row['Emotion']!r} not in {sorted(label_map)}")
                    continue
                dialogue = f"{split}_dia{d}"
                rows.append(((d, u), Utterance(
                    id=uid, audio=f"{media[split]}/dia{d}_utt{u}.mp4" if media[split] else None,
                    text=utt_text, label=label_map[raw], speaker=speaker, session=dialogue,
                    corpus=self.name, dialogue=dialogue, split=split, text_source="reference",
                    extra={"sentiment": (row.get("Sentiment") or "").strip(), "utterance_index": u,
                           "season": (row.get("Season") or "").strip(), "episode": (row.get("Episode") or "").strip(),
                           "episode_start": parse_time(row.get("StartTime")),
                           "episode_end": parse_time(row.get("EndTime")), "row": where},
                )))
            rows.sort(key=lambda r: r[0])
            scan.items.extend(u for _, u in rows)
        scan.notes["typography_repaired"] = repaired
        if protocol == "makhmudov2024":
            self._resplit(scan, found, int(options["resplit_seed"]))
        if cp1252_files:
            scan.notes["cp1252_files"] = cp1252_files
        return scan

    @staticmethod
    def _resplit(scan: Scan, found: list[str], seed: int) -> None:
        """Pool the splits and re-split them 80/20 per emotion (Makhmudov 2024's protocol)."""
        scan.notes["resplit_counts"] = resplit(scan.items, "makhmudov2024", seed)
        scan.notes["protocol"] = (
            f"makhmudov2024: 6 emotions (fear excluded), official splits {found} pooled and re-split 80/20 "
            f"per emotion (seed {seed}); the paper's Table 1: 10676 train / 2674 test on the full corpus")
        if len(found) < len(SPLITS):
            scan.notes["protocol"] += f"; only {found} present, so the counts cannot match the paper's"

    @staticmethod
    def _media_dir(src: Source, split: str, media) -> str | None:
        if media is False or media in ("none", None):
            return None
        if isinstance(media, dict):
            folder = media.get(split)
            if folder and not src.list(folder.strip("/") + "/"):
                raise CorpusError(f"meld: media folder {folder!r} for split {split!r} is empty or missing")
            return folder.strip("/") if folder else None
        if media != "auto":
            raise CorpusError(f"meld: option media must be 'auto', False or a split->folder dict, got {media!r}")
        for folder in MEDIA_DIRS[split]:
            if src.list(folder + "/"):
                return folder
        return None
