"""CREMA-D (Crowd-sourced Emotional Multimodal Actors Dataset), audio part.

Expected layout (the corpus root is the folder holding ``AudioWAV``)::

    <root>/AudioWAV/1001_DFA_ANG_XX.wav
    <root>/AudioWAV/...
    <root>/VideoDemographics.csv      (optional: ActorID,Age,Sex,Race,Ethnicity)

File name ``AAAA_SSS_EEE_LL``: actor id (1001-1091), sentence code (12 sentences, below),
emotion (ANG, DIS, FEA, HAP, NEU, SAD), level (LO, MD, HI, XX = unspecified, X also seen).
Label, speaker and text come from the name; the evaluation group is the speaker; the
actor's sex is added from VideoDemographics.csv when present.

Known quirk: the distributed ``1076_MTI_SAD_XX.wav`` holds no audio; it ends in quarantine.
"""

from __future__ import annotations

import csv
import io
import re

from emoflow.corpora.base import Adapter, ItemError, Scan, Source, decode_text, named_files
from emoflow.corpora.record import Utterance

SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


class CremadAdapter(Adapter):
    name = "cremad"
    labels = tuple(EMOTIONS.values())
    option_defaults = {"audio_dir": "AudioWAV"}
    layout = "  AudioWAV/1001_DFA_ANG_XX.wav\n  VideoDemographics.csv (optional)"

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan()
        sex = self._demographics(src, scan)
        prefix = options["audio_dir"].strip("/") + "/"
        for rel, uid, m in named_files(src, scan, prefix, NAME, "wav", f"{prefix}AAAA_SSS_EEE_LL.wav"):
            actor, sent, emo, level = m.groups()
            if sent not in SENTENCES:
                scan.reject(uid, rel, "bad_filename", f"{rel}: unknown sentence code {sent!r}")
                continue
            if emo not in EMOTIONS:
                scan.reject(uid, rel, "unknown_label", f"{rel}: emotion code {emo!r} not in {sorted(EMOTIONS)}")
                continue
            if level not in LEVELS:
                scan.reject(uid, rel, "bad_filename", f"{rel}: unknown intensity level {level!r}")
                continue
            extra = {"sentence": sent, "level": LEVELS[level]}
            if actor in sex:
                extra["gender"] = sex[actor]
            scan.items.append(Utterance(
                id=uid, audio=rel, text=SENTENCES[sent], label=EMOTIONS[emo], speaker=actor,
                session=actor, corpus=self.name, text_source="reference", extra=extra,
            ))
        if not scan.items and not scan.rejects:
            raise self.no_items_error(src)
        return scan

    def _demographics(self, src: Source, scan: Scan) -> dict[str, str]:
        if not src.exists("VideoDemographics.csv"):
            return {}
        try:
            text = decode_text(src.read_bytes("VideoDemographics.csv"), "VideoDemographics.csv")
        except ItemError as exc:
            scan.notes["demographics_error"] = exc.detail
            return {}
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("ActorID") and row.get("Sex"):
                out[row["ActorID"].strip()] = row["Sex"].strip().lower()
        return out
