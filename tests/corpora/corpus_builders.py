"""Tiny corpora written in exactly the layouts the adapters document (used by the corpora tests)."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def tone(name: str, seconds: float = 0.3, sr: int = SR, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """A short tone + noise, different for every ``name`` (so no accidental duplicates)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * rng.uniform(150, 400) * t) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_wav(path: Path, name: str | None = None, seconds: float = 0.3, sr: int = SR, channels: int = 1,
              fmt: str = "WAV", subtype: str | None = None, data: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone(name or path.name, seconds, sr, channels) if data is None else data
    sf.write(path, x, sr, format=fmt, subtype=subtype)
    return path


def write_mp4(path: Path, name: str, seconds: float = 0.4, sr: int = SR, audio: bool = True) -> Path:
    """An mp4 with an AAC audio track (or, with audio=False, a video-only mp4)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        if audio:
            s = c.add_stream("aac", rate=sr)
            s.layout = "mono"
            x = tone(name, seconds, sr)
            fr = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
            fr.sample_rate = sr
            for p in s.encode(fr):
                c.mux(p)
            for p in s.encode(None):
                c.mux(p)
        else:
            s = c.add_stream("mpeg4", rate=10)
            s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
            for i in range(3):
                img = np.full((32, 32, 3), i * 40, np.uint8)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode(None):
                c.mux(p)
    path.write_bytes(buf.getvalue())
    return path


# --- RAVDESS -------------------------------------------------------------------------------

def build_ravdess(root: Path, actors=(1, 2), emotions=("01", "03", "05"), ext="wav") -> list[str]:
    """Actor_NN/03-01-EE-II-SS-RR-AA.<ext>; returns the utterance ids."""
    ids = []
    for a in actors:
        for e in emotions:
            for stmt in ("01", "02"):
                uid = f"03-01-{e}-01-{stmt}-01-{a:02d}"
                write_wav(root / f"Actor_{a:02d}" / f"{uid}.{ext}", fmt="FLAC" if ext == "flac" else "WAV")
                ids.append(uid)
    (root / "metadata.csv").write_text("path,speaker\n")  # ignored: outside actor folders
    return ids


# --- IEMOCAP -------------------------------------------------------------------------------

IEMOCAP_DIALOGS = {
    # dialog: [(utt suffix, raw label, text)]
    "Ses01F_impro01": [("F000", "neu", "Excuse me."), ("M000", "fru", "Do you have your forms?"),
                       ("F001", "exc", "Yeah, I got it."), ("M001", "ang", "No, that's not it!")],
    "Ses01F_script01_1": [("F000", "sad", "What's he going to say?"), ("M000", "hap", "Maybe we should go.")],
    "Ses02M_script01_1": [("F000", "neu", "What's he going to say?"), ("M000", "xxx", "I don't know.")],
    "Ses02M_impro02": [("M000", "sad", "I miss her."), ("F000", "hap", "She will be back soon.")],
}


def build_iemocap(base: Path, dialogs=None) -> Path:
    """IEMOCAP_full_release/Session{n}/... as documented; returns the release folder."""
    root = base / "IEMOCAP_full_release"
    for dialog, utts in (dialogs or IEMOCAP_DIALOGS).items():
        sess = int(dialog[4])
        d = root / f"Session{sess}" / "dialog"
        ev, tr = [], []
        t = 1.0
        for suffix, raw, text in utts:
            uid = f"{dialog}_{suffix}"
            ev.append(f"[{t:.4f} - {t + 1.5:.4f}]\t{uid}\t{raw}\t[2.5000, 3.0000, 2.0000]")
            ev.append("C-E1:\tNeutral;\t()")  # evaluator line, not a record
            tr.append(f"{uid} [{t:08.4f}-{t + 1.5:08.4f}]: {text}")
            write_wav(root / f"Session{sess}" / "sentences" / "wav" / dialog / f"{uid}.wav", uid)
            t += 2
        (d / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (d / "transcriptions").mkdir(parents=True, exist_ok=True)
        header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        (d / "EmoEvaluation" / f"{dialog}.txt").write_text(header + "\n".join(ev) + "\n")
        (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr) + "\n")
    return root


# --- MELD ----------------------------------------------------------------------------------

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def meld_row(sr, text, speaker, emotion, d, u):
    return f'{sr},"{text}",{speaker},{emotion},neutral,{d},{u},8,21,"00:16:16,059","00:16:21,731"'


def build_meld(root: Path, media: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train = [MELD_HEADER,
             meld_row(1, "You must’ve had your hands full.", "Chandler", "neutral", 0, 1),
             meld_row(2, "also I was the point person…", "The Interviewer", "joy", 0, 0),
             meld_row(3, "That’s great!", "Monica", "surprise", 1, 0),
             meld_row(4, "No!", "Ross", "anger", 1, 1)]
    (root / "train_sent_emo.csv").write_text("\n".join(train) + "\n", encoding="utf-8")
    dev = [MELD_HEADER, meld_row(1, "Oh my God.", "Rachel", "sadness", 0, 0),
           meld_row(2, "What?", "Joey", "fear", 0, 1)]
    # the dev file is cp1252 (as some copies of MELD are): ’ is byte 0x92
    (root / "dev_sent_emo.csv").write_bytes(("\n".join(dev).replace("What?", "What’s that?") + "\n").encode("cp1252"))
    if media:
        for d, u in ((0, 0), (0, 1), (1, 0), (1, 1)):
            write_mp4(root / "train_splits" / f"dia{d}_utt{u}.mp4", f"train{d}{u}")
        for d, u in ((0, 0), (0, 1)):
            write_mp4(root / "dev_splits_complete" / f"dia{d}_utt{u}.mp4", f"dev{d}{u}")
    return root


# --- CMU-MOSEI -----------------------------------------------------------------------------

def build_mosei(root: Path, videos=None, raw: bool = True) -> Path:
    """CMU_MOSEI_Labels.csd + Raw/Audio/Full/WAV_16000 + Raw/Transcript/Segmented/Combined."""
    import h5py

    videos = videos or {
        # video: (seconds, [(start, end, [sent, happy, sad, anger, surprise, disgust, fear], text)])
        "vidA": (3.0, [(0.0, 1.0, [1.0, 0.667, 0, 0, 0, 0, 0], "I really liked it."),
                       (1.2, 2.0, [-1.0, 0, 0.333, 1.0, 0, 0.333, 0], "But the end was awful."),
                       (2.1, 2.9, [0.0, 0, 0, 0, 0, 0, 0], "Anyway.")]),
        "vidB": (2.0, [(0.0, 0.9, [-2.0, 0, 1.0, 0, 0, 0, 0.333], "I was so sad."),
                       (1.0, 1.9, [0.0, 0.333, 0.333, 0, 0, 0, 0], "Or maybe happy.")]),
    }
    root.mkdir(parents=True, exist_ok=True)
    pre = root / "Raw" if raw else root
    with h5py.File(root / "CMU_MOSEI_Labels.csd", "w") as f:
        data = f.create_group("All Labels").create_group("data")
        f["All Labels"].create_group("metadata")
        for vid, (secs, segs) in videos.items():
            g = data.create_group(vid)
            g["features"] = np.array([s[2] for s in segs], dtype=np.float32)
            g["intervals"] = np.array([[s[0], s[1]] for s in segs], dtype=np.float64)
            write_wav(pre / "Audio" / "Full" / "WAV_16000" / f"{vid}.wav", vid, seconds=secs)
            lines = [f"{vid}___{i}___{s[0]}___{s[1]}___{s[3]}" for i, s in enumerate(segs)]
            tdir = pre / "Transcript" / "Segmented" / "Combined"
            tdir.mkdir(parents=True, exist_ok=True)
            (tdir / f"{vid}.txt").write_text("\n".join(lines) + "\n")
    (root / "splits.json").write_text(json.dumps({"train": ["vidA"], "test": ["vidB"]}))
    return root


# --- CREMA-D, EmoDB ------------------------------------------------------------------------

def build_cremad(root: Path, names=("1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_TIE_NEU_XX", "1002_WSI_SAD_LO")) -> Path:
    for n in names:
        write_wav(root / "AudioWAV" / f"{n}.wav", n)
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n1002,21,Female,Caucasian,Not Hispanic\n")
    return root


def build_emodb(root: Path, names=("03a01Fa", "03b10Wb", "08a02Nc", "08b03Ta", "16a05Ld")) -> Path:
    for n in names:
        write_wav(root / "wav" / f"{n}.wav", n)
    return root


# --- generic CSV / demo --------------------------------------------------------------------

def build_csv(root: Path, rows: list[str] | None = None, header: str = "path,text,label,speaker,session",
              name: str = "manifest.csv", audio: tuple[str, ...] = ("wav/a.wav", "wav/b.wav", "wav/sub/c.flac")) -> Path:
    for rel in audio:
        write_wav(root / rel, rel, fmt="FLAC" if rel.endswith(".flac") else "WAV")
    rows = rows if rows is not None else [
        "wav/a.wav,Hello there.,happy,spk1,s1",
        "wav/b.wav,Go away.,angry,spk2,s2",
        'wav/sub/c.flac,"Well, fine.",neutral,spk1,s1',
    ]
    (root / name).write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    return root


def build_demo(root: Path, n: int = 4) -> Path:
    recs = []
    for i in range(n):
        rel = f"wav/S{i % 2 + 1}_m{i}_{i:04d}.wav"
        write_wav(root / rel, rel)
        recs.append({"id": f"S{i % 2 + 1}_{i:04d}", "audio": rel, "text": f"sentence {i}",
                     "label": ("happy", "sad")[i % 2], "speaker": f"v{i % 2}", "session": f"S{i % 2 + 1}",
                     "corpus": "demo", "text_source": "reference", "extra": {"synthetic": True}})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root
