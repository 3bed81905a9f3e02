"""EmoDB (Berlin Database of Emotional Speech).

Expected layout (the corpus root is the folder holding ``wav``)::

    <root>/wav/03a01Fa.wav
    <root>/wav/...

File name ``SSTTTEV``: SS speaker (03, 08-16), TTT text code (a01 a02 a04 a05 a07 b01 b02
b03 b09 b10 -> the 10 German sentences below), E emotion letter (W anger, L boredom,
E disgust, A fear, F happiness, T sadness, N neutral), V version letter. Label, speaker,
text and gender come from the name; the evaluation group is the speaker.
"""

from __future__ import annotations

import re

from emoflow.corpora.base import Adapter, Scan, Source, named_files
from emoflow.corpora.record import Utterance

SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
SPEAKERS = {"03": "male", "08": "female", "09": "female", "10": "male", "11": "male",
            "12": "male", "13": "female", "14": "female", "15": "male", "16": "female"}
NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


class EmodbAdapter(Adapter):
    name = "emodb"
    labels = tuple(EMOTIONS.values())
    option_defaults = {"audio_dir": "wav"}
    layout = "  wav/03a01Fa.wav"

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan()
        prefix = options["audio_dir"].strip("/") + "/"
        for rel, uid, m in named_files(src, scan, prefix, NAME, "wav", f"{prefix}SSTTTEV.wav (e.g. 03a01Fa.wav)"):
            spk, code, emo, version = m.groups()
            if spk not in SPEAKERS:
                scan.reject(uid, rel, "bad_filename", f"{rel}: unknown speaker {spk!r}")
                continue
            if code not in SENTENCES:
                scan.reject(uid, rel, "bad_filename", f"{rel}: unknown text code {code!r}")
                continue
            if emo not in EMOTIONS:
                scan.reject(uid, rel, "unknown_label", f"{rel}: emotion letter {emo!r} not in {sorted(EMOTIONS)}")
                continue
            scan.items.append(Utterance(
                id=uid, audio=rel, text=SENTENCES[code], label=EMOTIONS[emo], speaker=spk, session=spk,
                corpus=self.name, text_source="reference",
                extra={"gender": SPEAKERS[spk], "text_code": code, "version": version},
            ))
        if not scan.items and not scan.rejects:
            raise self.no_items_error(src)
        return scan
