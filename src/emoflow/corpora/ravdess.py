"""RAVDESS (Ryerson Audio-Visual Database of Emotional Speech and Song), speech part.

Expected layout (the corpus root is the folder holding the actor folders)::

    <root>/Actor_01/03-01-01-01-01-01-01.wav     (or .flac)
    <root>/Actor_01/...
    <root>/Actor_24/03-01-08-02-02-02-24.wav

File name fields ``MM-VV-EE-II-SS-RR-AA``: MM modality (03 = audio only), VV vocal channel
(01 speech, 02 song), EE emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry,
06 fearful, 07 disgust, 08 surprised), II intensity (01 normal, 02 strong), SS statement
(01 "Kids are talking by the door", 02 "Dogs are sitting by the door"), RR repetition,
AA actor (odd = male). Label, speaker, text and gender come from the file name; the
evaluation group (``session``) is the speaker. Song files (VV = 02) are excluded by
protocol unless ``include_song=True``. Other files at the root (e.g. ``metadata.csv``)
are ignored; any other file inside an ``Actor_NN`` folder is quarantined.

Known quirk: ``Actor_07/03-01-03-01-02-01-07`` and ``03-01-03-01-02-02-07`` are
byte-identical in the distributed data; ingest reports the pair as duplicate audio.
"""

from __future__ import annotations

import re

from emoflow.corpora.base import AUDIO_EXTS, Adapter, Scan, Source, ext, is_hidden, stem
from emoflow.corpora.record import Utterance

EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
INTENSITY = {"01": "normal", "02": "strong"}
NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")


class RavdessAdapter(Adapter):
    name = "ravdess"
    labels = tuple(EMOTIONS.values())
    option_defaults = {"include_song": False}
    layout = "  Actor_NN/03-01-EE-II-SS-RR-AA.wav|flac"

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan()
        hidden = 0
        for rel in src.list():
            parts = rel.split("/")
            if is_hidden(rel):
                hidden += 1
                continue
            if len(parts) != 2 or not ACTOR_DIR.match(parts[0]):
                continue  # files outside actor folders (metadata.csv, README) are not utterances
            actor_dir = ACTOR_DIR.match(parts[0]).group(1)
            m = NAME.match(stem(rel))
            if not m or ext(rel) not in AUDIO_EXTS:
                scan.reject(stem(rel), rel, "bad_filename",
                            f"{rel}: expected Actor_NN/03-01-EE-II-SS-RR-AA.wav|flac")
                continue
            modality, vocal, emo, inten, stmt, rep, actor = m.groups()
            uid = stem(rel)
            if actor != actor_dir:
                scan.reject(uid, rel, "speaker_mismatch", f"{rel}: actor {actor} in the name but folder Actor_{actor_dir}")
                continue
            if modality != "03" or vocal not in ("01", "02") or inten not in INTENSITY or stmt not in STATEMENTS:
                scan.reject(uid, rel, "bad_filename",
                            f"{rel}: modality {modality}, vocal channel {vocal}, intensity {inten} or statement {stmt} unknown")
                continue
            if emo not in EMOTIONS:
                scan.reject(uid, rel, "unknown_label", f"{rel}: emotion code {emo!r} not in {sorted(EMOTIONS)}")
                continue
            if vocal == "02" and not options["include_song"]:
                scan.exclude(uid, rel, EMOTIONS[emo], "song (vocal channel 02)")
                continue
            speaker = f"Actor_{actor}"
            scan.items.append(Utterance(
                id=uid, audio=rel, text=STATEMENTS[stmt], label=EMOTIONS[emo], speaker=speaker,
                session=speaker, corpus=self.name, text_source="reference",
                extra={"gender": "male" if int(actor) % 2 else "female", "intensity": INTENSITY[inten],
                       "statement": stmt, "repetition": rep, "vocal_channel": "speech" if vocal == "01" else "song"},
            ))
        if hidden:
            scan.notes["ignored_hidden_files"] = hidden
        if not scan.items and not scan.rejects and not scan.excluded:
            raise self.no_items_error(src)
        return scan
