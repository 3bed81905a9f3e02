"""CMU-MOSEI: YouTube monologues with segment-level sentiment and six emotion intensities.

Expected layout (the CMU-MultimodalSDK labels file plus the raw release)::

    <root>/CMU_MOSEI_Labels.csd                             (HDF5, from the SDK)
    <root>/Raw/Audio/Full/WAV_16000/<video_id>.wav          (full-video audio)
    <root>/Raw/Transcript/Segmented/Combined/<video_id>.txt (SDK text)
        "<video_id>___<seg>___<start>___<end>___<text>"
    <root>/splits.json   (optional: {"train": [video ids], "valid": [...], "test": [...]},
                          e.g. the SDK's standard folds)

(``Raw/`` may be left out.) The .csd file is HDF5: ``<top>/data/<video_id>/features``
[N, 7] = [sentiment, happy, sad, anger, surprise, disgust, fear] and
``<top>/data/<video_id>/intervals`` [N, 2] = segment [start, end] seconds. Each labelled
segment becomes one utterance ``<video_id>[<i>]`` cut from the full-video WAV by
``start``/``end`` (the WAV itself is stored once). The transcript is the SDK text segment
whose [start, end] matches within ``time_tolerance`` seconds.

Single-label protocol (the common one): the label is the dominant emotion among those with
presence > 0 (largest intensity). Segments where no emotion is present are excluded as
``none`` (or labelled ``neutral`` with ``none_as_neutral=True``); segments whose top
intensity is shared by several emotions are excluded as ``tie`` (or resolved in the order
happy, sad, angry, surprise, disgust, fear with ``tie_break="order"``). The full vector is
kept in ``extra.emotions`` and the sentiment score in ``extra.sentiment``.
There are no speaker ids: ``speaker`` and ``session`` are the video id.

Every utterance also carries the multi-label truth: ``extra.emotion_presence``, the emotions with
intensity > 0 (CMU-MOSEI's usual binarisation), what per-emotion binary metrics score
(``emoflow.evaluation.metrics.multilabel_metrics``).

Protocols (option ``protocol``): ``official`` (default: ``splits.json`` if given) or
``makhmudov2024`` (Makhmudov et al. 2024): 6 emotions, no neutral; ties of the dominant emotion
resolved in order (every segment with an emotion present is kept, as a multi-label protocol
does; ``tie_break`` unset means ``exclude`` for ``official`` and ``order`` here); all segments
pooled and re-split 80/20 stratified by dominant emotion (floor(0.8 n) per emotion to train, drawn
with ``resplit_seed``); the task is multi-label (``extra.task = "multilabel"``: the train step
trains on ``emotion_presence`` with a sigmoid head, see ``emoflow.training.data``). The paper's Table 1 counts emotion labels, not segments (22,851 + 5,715 =
28,566 labels of about 23,000 segments), so a segment-level split cannot match them exactly.
"""

from __future__ import annotations

import json

import numpy as np

from emoflow.corpora.base import Adapter, CorpusError, ItemError, Scan, Source, decode_text, temp_dir
from emoflow.corpora.protocols import check_protocol, resplit
from emoflow.corpora.record import Utterance

EMOTIONS = ("happy", "sad", "angry", "surprise", "disgust", "fear")
LABELS_FILE = "CMU_MOSEI_Labels.csd"


def single_label(vector, none_as_neutral=False, tie_break="exclude") -> tuple[str | None, str]:
    """(label, why) for the six intensities; label None means excluded (why = 'none' / 'tie')."""
    v = np.asarray(vector, dtype=float)
    top = v.max()
    if not top > 0:
        return ("neutral", "") if none_as_neutral else (None, "none")
    winners = [i for i in range(len(EMOTIONS)) if np.isclose(v[i], top)]
    if len(winners) > 1 and tie_break != "order":
        return None, "tie"
    return EMOTIONS[winners[0]], ""


class MoseiAdapter(Adapter):
    name = "mosei"
    labels = EMOTIONS
    option_defaults = {"none_as_neutral": False, "tie_break": None, "time_tolerance": 0.05,
                       "require_text": True, "splits_file": "splits.json", "protocol": "official",
                       "resplit_seed": 0}
    layout = (
        "  CMU_MOSEI_Labels.csd\n  Raw/Audio/Full/WAV_16000/<video_id>.wav\n"
        "  Raw/Transcript/Segmented/Combined/<video_id>.txt"
    )

    def scan(self, src: Source, options: dict) -> Scan:
        protocol = check_protocol("mosei", options["protocol"])
        if protocol == "makhmudov2024" and options["none_as_neutral"]:
            raise CorpusError("mosei: protocol 'makhmudov2024' has no neutral class; leave none_as_neutral off")
        if options["tie_break"] is None:
            options = {**options, "tie_break": "order" if protocol == "makhmudov2024" else "exclude"}
        if options["tie_break"] not in ("exclude", "order"):
            raise CorpusError(f"mosei: tie_break must be 'exclude' or 'order', got {options['tie_break']!r}")
        scan = Scan()
        if options["none_as_neutral"]:
            scan.labels = EMOTIONS + ("neutral",)
        if not src.exists(LABELS_FILE):
            raise CorpusError(f"mosei: {LABELS_FILE} not found under {src.uri}; expected layout:\n{self.layout}")
        labels = self._read_csd(src)
        raw = "Raw/" if src.list("Raw/") else ""
        audio_dir = f"{raw}Audio/Full/WAV_16000"
        text_dir = f"{raw}Transcript/Segmented/Combined"
        splits = self._splits(src, options["splits_file"])
        tol = float(options["time_tolerance"])
        for video in sorted(labels):
            feats, ivals = labels[video]
            trans_rel = f"{text_dir}/{video}.txt"
            texts = self._texts(src, trans_rel)
            for i in range(len(feats)):
                uid = f"{video}[{i}]"
                where = f"{LABELS_FILE}:{video}[{i}]"
                start, end = float(ivals[i][0]), float(ivals[i][1])
                vec = [float(x) for x in feats[i][1:7]]
                if not (np.all(np.isfinite(feats[i])) and np.isfinite([start, end]).all()):
                    scan.reject(uid, where, "bad_row", f"{where}: non-finite label or interval values")
                    continue
                label, why = single_label(vec, options["none_as_neutral"], options["tie_break"])
                if label is None:
                    scan.exclude(uid, where, why, "no emotion present" if why == "none" else "tied dominant emotions")
                    continue
                if isinstance(texts, ItemError):
                    scan.reject(uid, trans_rel, texts.reason, texts.detail)
                    continue
                text = next((t for s, e, t in texts if abs(s - start) <= tol and abs(e - end) <= tol), None)
                if text is None and options["require_text"]:
                    scan.reject(uid, trans_rel, "missing_text",
                                f"{uid}: no transcript segment [{start:.2f}, {end:.2f}] in {trans_rel}")
                    continue
                scan.items.append(Utterance(
                    id=uid, audio=f"{audio_dir}/{video}.wav", text=text, label=label, speaker=video,
                    session=video, corpus=self.name, dialogue=video, start=start, end=end,
                    split=splits.get(video), text_source="reference" if text is not None else None,
                    extra={"emotions": dict(zip(EMOTIONS, vec)), "sentiment": float(feats[i][0]),
                           "emotion_presence": [e for e, x in zip(EMOTIONS, vec) if x > 0],
                           "segment_index": i},
                ))
        if not scan.items and not scan.rejects and not scan.excluded:
            raise self.no_items_error(src)
        scan.notes["protocol"] = (
            "single label = dominant emotion among those with presence > 0; "
            f"none -> {'neutral' if options['none_as_neutral'] else 'excluded'}, "
            f"ties -> {'resolved in order ' + ','.join(EMOTIONS) if options['tie_break'] == 'order' else 'excluded'}"
        )
        if protocol == "makhmudov2024":
            scan.notes["resplit_counts"] = resplit(scan.items, "makhmudov2024", int(options["resplit_seed"]))
            for utt in scan.items:  # the paper's task: one binary decision per emotion
                utt.extra["task"] = "multilabel"
            scan.notes["protocol"] = (
                "makhmudov2024: segments with an emotion present, pooled and re-split 80/20 per dominant "
                f"emotion (seed {options['resplit_seed']}); multi-label truth in extra.emotion_presence; "
                + scan.notes["protocol"])
        return scan

    def _read_csd(self, src: Source) -> dict:
        try:
            import h5py
        except ImportError as exc:  # pragma: no cover - h5py is a pinned dependency of this adapter
            raise CorpusError("mosei: reading CMU_MOSEI_Labels.csd needs h5py (pip install h5py==3.16.0)") from exc
        with temp_dir() as tmp:
            path = src.local_path(LABELS_FILE, tmp)
            try:
                with h5py.File(path, "r") as f:
                    tops = [k for k in f.keys() if isinstance(f[k], h5py.Group) and "data" in f[k]]
                    if len(tops) != 1:
                        raise CorpusError(f"mosei: {LABELS_FILE} has no single '<name>/data' group (top: {list(f.keys())})")
                    data = f[tops[0]]["data"]
                    out = {}
                    for video in data:
                        g = data[video]
                        if "features" not in g or "intervals" not in g:
                            raise CorpusError(f"mosei: {LABELS_FILE}: video {video!r} lacks features/intervals")
                        feats, ivals = np.asarray(g["features"]), np.asarray(g["intervals"])
                        if feats.ndim != 2 or feats.shape[1] < 7 or ivals.shape != (feats.shape[0], 2):
                            raise CorpusError(
                                f"mosei: {LABELS_FILE}: video {video!r} has features {feats.shape} / intervals "
                                f"{ivals.shape}, expected [N, 7] / [N, 2]"
                            )
                        out[str(video)] = (feats, ivals)
                    return out
            except OSError as exc:
                raise CorpusError(f"mosei: {LABELS_FILE} is not a readable HDF5 file: {exc}") from None

    @staticmethod
    def _texts(src: Source, rel: str):
        """[(start, end, text)] of the SDK transcript, [] when absent, ItemError when unreadable."""
        if not src.exists(rel):
            return []
        try:
            text = decode_text(src.read_bytes(rel), rel)
        except ItemError as exc:
            return exc
        out = []
        for line in text.splitlines():
            parts = line.strip().split("___", 4)
            if len(parts) == 5:
                try:
                    out.append((float(parts[2]), float(parts[3]), parts[4].strip()))
                except ValueError:
                    continue
        return out

    @staticmethod
    def _splits(src: Source, rel: str | None) -> dict[str, str]:
        if not rel or not src.exists(rel):
            return {}
        try:
            data = json.loads(decode_text(src.read_bytes(rel), rel))
            return {str(v): split for split, videos in data.items() for v in videos}
        except (ValueError, AttributeError, TypeError, ItemError) as exc:
            raise CorpusError(f"mosei: {rel} is not a {{split: [video ids]}} JSON object: {exc}") from None
