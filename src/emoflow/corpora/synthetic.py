"""Synthetic demo corpus: espeak-ng text-to-speech with per-emotion prosody.

SYNTHETIC DATA, FOR SMOKE TESTS ONLY. The "emotions" here are crude prosody settings of a
formant synthesiser (pitch, speaking rate, pitch range, volume, word gap) plus sentences whose
wording leans to an emotion part of the time. Nothing learned on it says anything about real
emotional speech; it exists so the whole pipeline can run end to end on any machine.

Layout written by `generate_demo_corpus(out_dir)`:
    out_dir/wav/S1_m3_0001.wav   16 kHz mono 16-bit PCM, 1-3 s
    out_dir/manifest.jsonl       Utterance records, `audio` relative to out_dir ("wav/...")
    out_dir/README.txt           states it is synthetic + the generation parameters

Speech comes from libespeak-ng as bundled by the PyPI package `espeakng-loader`, driven through
ctypes in synchronous (retrieval) mode. The library keeps synthesis state (pitch flutter phase,
echo buffer) across calls, so every utterance is synthesised by a freshly loaded private copy of
the library: each file then depends only on its own parameters and generation is byte-identical
for the same arguments.

CLI: python -m emoflow.corpora.synthetic OUT_DIR [--sessions 4] [--speakers-per-session 2]
     [--utterances-per-speaker 24] [--emotions neutral,happy,sad,angry] [--seed 0]
"""

from __future__ import annotations

import _ctypes
import argparse
import ctypes
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoflow.corpora.record import Utterance, read_manifest, write_manifest

SAMPLE_RATE = 16000
MIN_SECONDS = 1.0
MAX_SECONDS = 3.0
CORPUS_NAME = "demo"

# --- sentence bank (original sentences written for this project) --------------------------
# Sentences whose wording leans to one emotion; "neutral" ones are matter-of-fact.
LEANING: dict[str, tuple[str, ...]] = {
    "neutral": (
        "The meeting starts at nine tomorrow.",
        "Please put the files on the desk.",
        "The train leaves from platform four.",
        "I will send the report this afternoon.",
        "The store closes at six today.",
        "We need two more chairs in here.",
        "The package arrived this morning.",
        "Turn left after the second light.",
        "The form has three pages.",
        "Lunch is in the room next door.",
    ),
    "happy": (
        "This is the best day I have had!",
        "I am so glad you came!",
        "We won the whole thing!",
        "What a wonderful surprise this is!",
        "I love how this turned out.",
        "That made me laugh so much.",
        "Everything worked out perfectly.",
        "I can't wait to see them again!",
        "You did a brilliant job.",
        "Thank you, this means a lot.",
    ),
    "sad": (
        "I miss her more every day.",
        "Nothing seems to go right lately.",
        "He never called me back.",
        "I wish things had been different.",
        "It feels so empty without him.",
        "I lost the only photo I had.",
        "Nobody came to the party.",
        "I am just too tired to try.",
        "We had to say goodbye today.",
        "I don't think it will get better.",
    ),
    "angry": (
        "Stop touching my things right now!",
        "You lied to me again!",
        "This is completely unacceptable.",
        "Get out of my office!",
        "I told you a hundred times!",
        "Who do you think you are?",
        "Don't you dare walk away from me!",
        "I am sick of your excuses.",
        "You broke it and you know it.",
        "That is the last time I help you.",
    ),
}
# Sentences that fit any emotion: here only prosody carries the label.
AMBIGUOUS: tuple[str, ...] = (
    "I saw him at the station yesterday.",
    "So that is what happened.",
    "She said she would be here by noon.",
    "We are moving to a new house.",
    "It is going to rain all week.",
    "They changed the plan again.",
    "You have to see this.",
    "My brother called me last night.",
    "The results came in today.",
    "I did not expect that.",
    "Are you coming with us?",
    "It was the last one in the shop.",
    "Well, here we are.",
    "He is leaving for good.",
    "We sold the old car.",
    "Look at what they did.",
)
# Share of utterances whose sentence leans to the label / to another emotion (misleading);
# the rest use an ambiguous sentence.
P_TEXT_MATCH = 0.5
P_TEXT_OTHER = 0.1


# --- prosody ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prosody:
    rate: float     # words per minute (espeak default 175)
    pitch: float    # base pitch 0-100 (default 50)
    range: float    # pitch range 0-100 (default 50)
    volume: float   # amplitude 0-200 (default 100)
    wordgap: float  # extra pause between words, units of 10 ms


EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(rate=160, pitch=45, range=35, volume=100, wordgap=0),
    "happy": Prosody(rate=185, pitch=68, range=85, volume=125, wordgap=0),
    "sad": Prosody(rate=125, pitch=30, range=12, volume=70, wordgap=2),
    "angry": Prosody(rate=195, pitch=55, range=60, volume=170, wordgap=0),
}
# Per-utterance Gaussian jitter (standard deviation) on each parameter.
JITTER = Prosody(rate=12, pitch=7, range=10, volume=12, wordgap=0.7)
# Per-speaker offsets (standard deviation), drawn once per voice.
SPEAKER_JITTER = Prosody(rate=8, pitch=5, range=6, volume=8, wordgap=0)
_LIMITS = {"rate": (80, 450), "pitch": (0, 100), "range": (0, 100), "volume": (10, 200),
           "wordgap": (0, 10)}

# espeak-ng voice variants (files in espeak-ng-data/voices/!v), alternating male / female.
VOICE_VARIANTS = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7", "m8")
# Accent by session (cycled): sessions differ a little, as recording sessions do.
SESSION_ACCENTS = ("en-us", "en", "en-us", "en-gb-x-rp")


# --- libespeak-ng through ctypes -------------------------------------------------------------
class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed on an utterance."""


_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_LOCK = threading.Lock()  # libespeak-ng is a process-wide singleton


class _Espeak:
    """Loads a private copy of libespeak-ng; each `synth` call uses a freshly loaded instance."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SynthesisError(
                "the demo corpus needs espeak-ng: pip install espeakng-loader==0.2.4") from exc
        src = Path(espeakng_loader.get_library_path())
        self.data_path = espeakng_loader.get_data_path().encode()
        if not src.is_file():
            raise SynthesisError(f"espeakng-loader library missing: {src}")
        # A private copy: nobody else in the process holds it, so dlclose really unloads it
        # and the next load starts from clean static state.
        self._tmp = tempfile.mkdtemp(prefix="emoflow-espeak-")
        self.lib_path = str(Path(self._tmp) / src.name)
        shutil.copyfile(src, self.lib_path)
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._collect)
        self.sample_rate = 0
        self.version = ""

    def _collect(self, wav, n, _events) -> int:
        if n > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, n * 2))
        return 0

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def synth(self, text: str, voice: str, params: dict[str, int]) -> np.ndarray:
        """Synthesise `text`; returns int16 samples at `self.sample_rate`."""
        lib = ctypes.CDLL(self.lib_path)
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                              ctypes.c_int]
            lib.espeak_Info.restype = ctypes.c_char_p
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                         ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                         ctypes.c_void_p, ctypes.c_void_p]
            sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path,
                                       _INIT_DONT_EXIT)
            if sr <= 0:
                raise SynthesisError(f"espeak_Initialize failed (data {self.data_path!r})")
            self.sample_rate = sr
            self.version = (lib.espeak_Info(None) or b"").decode()
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthesisError(f"espeak-ng has no voice {voice!r}")
            for name, value in params.items():
                if lib.espeak_SetParameter(_PARAM[name], int(value), 0) != 0:
                    raise SynthesisError(f"espeak-ng rejected {name}={value} for {text!r}")
            lib.espeak_ng_SetRandSeed(1)  # breathy voices draw noise
            data = text.encode("utf-8")
            self._chunks = []
            status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                      None, None)
            if status != 0:
                raise SynthesisError(f"espeak_Synth failed with status {status} on {text!r}")
            samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
            if samples.size == 0:
                raise SynthesisError(f"espeak-ng produced no audio for {text!r} ({voice})")
            return samples
        finally:
            self._chunks = []
            lib.espeak_Terminate()
            handle = lib._handle
            del lib
            _ctypes.dlclose(handle)


# --- generation --------------------------------------------------------------------------------
def _jittered(base: Prosody, *offsets: dict[str, float]) -> dict[str, int]:
    out = {}
    for name, (lo, hi) in _LIMITS.items():
        value = getattr(base, name) + sum(o[name] for o in offsets)
        out[name] = int(round(min(max(value, lo), hi)))
    return out


def _draw(rng: np.random.Generator, scale: Prosody) -> dict[str, float]:
    return {name: float(rng.normal(0.0, getattr(scale, name))) for name in _LIMITS}


def _to_16k(samples: np.ndarray, sr: int) -> np.ndarray:
    import soxr  # installed with librosa

    x = samples.astype(np.float32) / 32768.0
    if sr != SAMPLE_RATE:
        x = soxr.resample(x, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return x


def _trim(x: np.ndarray, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing silence (10 ms frames 40 dB under the loudest), keep a margin."""
    hop = SAMPLE_RATE // 100
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    voiced = np.nonzero(rms > rms.max() * 0.01)[0]
    if voiced.size == 0:
        return x
    margin = int(margin_s * SAMPLE_RATE)
    start = max(voiced[0] * hop - margin, 0)
    end = min((voiced[-1] + 1) * hop + margin, len(x))
    return x[start:end]


def _wav_bytes(x: np.ndarray) -> bytes:
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _render(engine: _Espeak, text: str, voice: str,
            params: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    """Synthesise at 16 kHz within [MIN_SECONDS, MAX_SECONDS]: speed up if too long, pad if short.

    Returns the samples and the parameters finally used."""
    params = dict(params)
    for _ in range(6):
        x = _trim(_to_16k(engine.synth(text, voice, params), engine.sample_rate))
        dur = len(x) / SAMPLE_RATE
        if dur <= MAX_SECONDS - 0.05:
            break
        params["rate"] = min(int(np.ceil(params["rate"] * dur / (MAX_SECONDS - 0.15))) + 1, 450)
        params["wordgap"] = 0
    else:
        raise SynthesisError(f"cannot fit {text!r} ({voice}) into {MAX_SECONDS} s")
    short = int(np.ceil(MIN_SECONDS * SAMPLE_RATE)) - len(x)
    if short > 0:
        x = np.pad(x, (short // 2, short - short // 2))
    return x, params


def _check_args(sessions, speakers_per_session, utterances_per_speaker, emotions) -> tuple[str, ...]:
    for name, value in (("sessions", sessions), ("speakers_per_session", speakers_per_session),
                        ("utterances_per_speaker", utterances_per_speaker)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if speakers_per_session > len(VOICE_VARIANTS):
        raise ValueError(f"speakers_per_session={speakers_per_session}: at most "
                         f"{len(VOICE_VARIANTS)} voices ({', '.join(VOICE_VARIANTS)})")
    if isinstance(emotions, str):
        raise ValueError(f"emotions must be a sequence of names, got the string {emotions!r}")
    emotions = tuple(emotions)
    if not emotions:
        raise ValueError("emotions must not be empty")
    for emo in emotions:
        if emo not in EMOTION_PROSODY:
            raise ValueError(f"unknown emotion {emo!r}; the demo corpus knows "
                             f"{sorted(EMOTION_PROSODY)}")
    if len(set(emotions)) != len(emotions):
        raise ValueError(f"duplicate emotion in {list(emotions)}")
    return emotions


def _pick_text(rng: np.random.Generator, label: str, emotions: tuple[str, ...]) -> tuple[str, str]:
    r = rng.random()
    others = [e for e in emotions if e != label]
    if r < P_TEXT_MATCH:
        cue, pool = "label", LEANING[label]
    elif r < P_TEXT_MATCH + P_TEXT_OTHER and others:
        other = others[int(rng.integers(len(others)))]
        cue, pool = f"other:{other}", LEANING[other]
    else:
        cue, pool = "ambiguous", AMBIGUOUS
    return pool[int(rng.integers(len(pool)))], cue


def _readme(params: dict, voices: list[str], version: str, n: int) -> str:
    prosody = {e: vars(p) for e, p in EMOTION_PROSODY.items() if e in params["emotions"]}
    return (
        "SYNTHETIC DEMO CORPUS - FOR SMOKE TESTS ONLY\n"
        "============================================\n\n"
        "Every file here is synthetic speech generated by espeak-ng (libespeak-ng "
        f"{version}, bundled by the PyPI package espeakng-loader) with emoflow.corpora.synthetic.\n"
        "The emotion labels are crude prosody settings (pitch, speaking rate, pitch range, volume,\n"
        "word gap) plus sentence wording that leans to the label part of the time. It is NOT\n"
        "emotional speech. It is for smoke tests only (checking that the pipeline runs), never\n"
        "for judging a model.\n\n"
        f"utterances: {n}\n"
        f"parameters: {json.dumps(params, sort_keys=True)}\n"
        f"voices: {', '.join(voices)}\n"
        f"audio: {SAMPLE_RATE} Hz mono 16-bit PCM WAV, {MIN_SECONDS}-{MAX_SECONDS} s\n"
        f"text: sentence leaning to the label with p={P_TEXT_MATCH}, to another emotion with "
        f"p={P_TEXT_OTHER}, otherwise an ambiguous sentence\n"
        f"prosody per emotion (espeak-ng units): {json.dumps(prosody, sort_keys=True)}\n"
        f"per-utterance jitter (std): {json.dumps(vars(JITTER), sort_keys=True)}\n"
        f"per-speaker offset (std): {json.dumps(vars(SPEAKER_JITTER), sort_keys=True)}\n"
    )


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def generate_demo_corpus(
    out_dir: str | Path,
    *,
    sessions: int = 4,
    speakers_per_session: int = 2,
    utterances_per_speaker: int = 24,
    emotions: tuple[str, ...] | list[str] = ("neutral", "happy", "sad", "angry"),
    seed: int = 0,
) -> list[Utterance]:
    """Generate the synthetic demo corpus (smoke tests only) under `out_dir`.

    Writes wav/<speaker>_<nnnn>.wav (16 kHz mono 16-bit), manifest.jsonl (audio paths relative to
    out_dir) and README.txt. Labels are balanced per speaker. Same arguments give byte-identical
    files. Stale .wav files in out_dir/wav from an earlier, different generation are removed.
    Returns the utterances with `audio` relative to out_dir (see `read_demo` for absolute paths).
    """
    emotions = _check_args(sessions, speakers_per_session, utterances_per_speaker, emotions)
    out = Path(out_dir)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    utts: list[Utterance] = []
    voices: list[str] = []
    with _LOCK:
        engine = _Espeak()
        try:
            for s in range(sessions):
                accent = SESSION_ACCENTS[s % len(SESSION_ACCENTS)]
                for j in range(speakers_per_session):
                    variant = VOICE_VARIANTS[(s * speakers_per_session + j) % len(VOICE_VARIANTS)]
                    voice = f"{accent}+{variant}"
                    speaker = f"S{s + 1}_{variant}"
                    voices.append(f"{speaker}={voice}")
                    rng = np.random.default_rng([seed, s, j])
                    spk_offset = _draw(rng, SPEAKER_JITTER)
                    labels = [emotions[k % len(emotions)] for k in range(utterances_per_speaker)]
                    labels = [labels[k] for k in rng.permutation(len(labels))]
                    for k, label in enumerate(labels, 1):
                        text, cue = _pick_text(rng, label, emotions)
                        params = _jittered(EMOTION_PROSODY[label], spk_offset, _draw(rng, JITTER))
                        x, params = _render(engine, text, voice, params)
                        uid = f"{speaker}_{k:04d}"
                        rel = f"wav/{uid}.wav"
                        _write_if_changed(out / rel, _wav_bytes(x))
                        utts.append(Utterance(
                            id=uid, audio=rel, text=text, label=label, speaker=speaker,
                            session=f"S{s + 1}", corpus=CORPUS_NAME, text_source="reference",
                            extra={"synthetic": True, "voice": voice, "text_cue": cue,
                                   "prosody": params, "duration": round(len(x) / SAMPLE_RATE, 4)},
                        ))
            version = engine.version
        finally:
            engine.close()
    keep = {Path(u.audio).name for u in utts}
    for stale in wav_dir.glob("*.wav"):
        if stale.name not in keep:
            stale.unlink()
    params = {"sessions": sessions, "speakers_per_session": speakers_per_session,
              "utterances_per_speaker": utterances_per_speaker, "emotions": list(emotions),
              "seed": seed}
    buf = io.StringIO()
    write_manifest(buf, utts)
    _write_if_changed(out / "manifest.jsonl", buf.getvalue().encode("utf-8"))
    _write_if_changed(out / "README.txt", _readme(params, voices, version, len(utts)).encode())
    return utts


def read_demo(root: str | Path) -> list[Utterance]:
    """Read root/manifest.jsonl of a demo corpus; relative audio paths become absolute paths."""
    root = Path(root).resolve()
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no demo corpus manifest at {manifest}")
    utts = read_manifest(manifest)
    for u in utts:
        if not u.audio:
            raise ValueError(f"demo utterance {u.id!r} has no audio path")
        path = Path(u.audio)
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise FileNotFoundError(f"demo utterance {u.id!r}: audio file missing: {path}")
        u.audio = str(path)
    return utts


def main(argv: list[str] | None = None) -> int:
    """CLI: generate the synthetic demo corpus into OUT_DIR."""
    ap = argparse.ArgumentParser(
        prog="python -m emoflow.corpora.synthetic",
        description="Generate the SYNTHETIC espeak-ng demo corpus (smoke tests only).")
    ap.add_argument("out_dir")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--speakers-per-session", type=int, default=2)
    ap.add_argument("--utterances-per-speaker", type=int, default=24)
    ap.add_argument("--emotions", default="neutral,happy,sad,angry",
                    help="comma-separated subset of " + ",".join(EMOTION_PROSODY))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        utts = generate_demo_corpus(
            args.out_dir, sessions=args.sessions, speakers_per_session=args.speakers_per_session,
            utterances_per_speaker=args.utterances_per_speaker,
            emotions=[e.strip() for e in args.emotions.split(",") if e.strip()], seed=args.seed)
    except (ValueError, SynthesisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(utts)} synthetic utterances to {args.out_dir} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
