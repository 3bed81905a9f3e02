"""Transcribe step: reference pass-through, faster-whisper tiny.en offline, pocketsphinx, WER, quarantine."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED_DATA
from emoflow.corpora.record import Utterance
from emoflow.text.transcribe import transcribe, wer, word_edits

RAVDESS_TEXT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def utt(uid, audio=None, text=None, corpus="c", **kw):
    return Utterance(id=uid, audio=audio, text=text, label="neutral", speaker="s", session="s", corpus=corpus, **kw)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two synthetic espeak-ng utterances with their reference text (emoflow's demo generator)."""
    synthetic = pytest.importorskip("emoflow.corpora.synthetic")
    out = tmp_path_factory.mktemp("demo")
    try:
        synthetic.generate_demo_corpus(out, sessions=1, speakers_per_session=1, utterances_per_speaker=2,
                                       emotions=("neutral",), seed=0)
    except synthetic.SynthesisError as exc:
        pytest.skip(f"espeak-ng unavailable: {exc}")
    return synthetic.read_demo(out)


def test_wer():
    assert wer("Kids are talking by the door.", "kids are talking by the door") == 0.0
    assert wer("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert word_edits("I can't go", "i cant go") == (1, 3)
    assert wer("", "") == 0.0 and wer("", "noise") == 1.0


def test_reference_pass_through_and_bad_backend():
    utts = [utt("a", text="hello there"), utt("b", audio=None, text=None)]
    out, quarantine, summary = transcribe(utts, backend="reference")
    assert out[0].text == "hello there" and out[0].text_source == "reference"
    assert out[1].text is None and quarantine == []
    assert summary["corpora"]["c"]["reference"] == 1 and summary["corpora"]["c"]["no_text"] == 1
    assert utts[0].text_source is None  # inputs untouched
    with pytest.raises(ValueError, match="unknown transcribe backend"):
        transcribe(utts, backend="kaldi")


def test_faster_whisper_on_synthetic_speech(speech):
    out, quarantine, summary = transcribe(speech, backend="faster-whisper")
    assert quarantine == [] and len(out) == 2
    for u, ref in zip(out, speech):
        print(f"{u.id}: ref={ref.text!r} asr={u.text!r} wer={u.extra['wer']}")
        assert u.text_source == "asr:faster-whisper" and u.extra["reference_text"] == ref.text
        assert u.extra["asr_words"] and all(w["end"] >= w["start"] for w in u.extra["asr_words"])
    corpus = summary["corpora"]["demo"]
    print("synthetic corpus WER", corpus["wer"])
    assert corpus["asr"] == 2 and corpus["wer_n"] == 2
    assert corpus["wer"] < 0.5  # espeak is intelligible to Whisper tiny.en


def test_auto_uses_reference_then_asr_and_chunks_long_audio(speech, tmp_path):
    # one utterance keeps its reference; one without text goes to ASR; a 70 s file is chunked
    long_path = tmp_path / "long.wav"
    x, sr = sf.read(speech[0].audio, dtype="float32")
    gap = np.zeros(int(sr * 33), np.float32)
    sf.write(long_path, np.concatenate([x, gap, x, gap]), sr)
    utts = [speech[0], dataclasses.replace(speech[1], text=None, text_source=None),
            utt("long", audio=str(long_path), corpus="demo")]
    out, quarantine, summary = transcribe(utts, backend="auto", chunk_s=30.0)
    assert quarantine == []
    assert out[0].text_source == "reference" and out[0].text == speech[0].text
    assert out[1].text_source == "asr:faster-whisper" and out[1].text
    long_words = out[2].extra["asr_words"]
    print("long file:", out[2].text, [(w["word"], w["start"]) for w in long_words])
    assert any(w["start"] > 30.0 for w in long_words)  # words of the second chunk, times shifted
    assert summary["corpora"]["demo"]["asr"] == 2 and summary["corpora"]["demo"]["reference"] == 1


def test_pocketsphinx_path(speech):
    out, quarantine, summary = transcribe(speech[:1], backend="pocketsphinx")
    assert quarantine == []
    u = out[0]
    print(f"pocketsphinx: ref={speech[0].text!r} asr={u.text!r} wer={u.extra['wer']}")
    assert u.text_source == "asr:pocketsphinx" and u.text.strip()
    assert u.extra["asr_words"][0]["word"] in u.text
    assert summary["corpora"]["demo"]["wer"] is not None


def test_quarantine_undecodable_and_missing(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    utts = [utt("broken", audio=str(bad), text="hello"), utt("nothing", audio=None, text=None),
            utt("gone", audio=str(tmp_path / "gone.flac"))]
    out, quarantine, summary = transcribe(utts, backend="pocketsphinx")
    assert out == []
    reasons = {q["id"]: q["reason"] for q in quarantine}
    assert "broken.wav" in reasons["broken"] and "no audio" in reasons["nothing"] and "gone.flac" in reasons["gone"]
    assert summary["in"] == summary["accepted"] + summary["quarantined"] == 3


def test_unloadable_model_quarantines_with_reason(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    out, quarantine, _ = transcribe([utt("a", audio=str(wav))], backend="faster-whisper",
                                    model=str(tmp_path / "no-such-model"))
    assert out == [] and "no-such-model" in quarantine[0]["reason"]


@pytest.mark.realdata
def test_faster_whisper_on_ravdess():
    root = Path(SHARED_DATA) / "ravdess"
    files = [root / "Actor_01" / "03-01-01-01-01-01-01.flac", root / "Actor_02" / "03-01-05-02-02-01-02.flac"]
    if not all(f.is_file() for f in files):
        pytest.skip(f"RAVDESS clips absent under {root}")
    utts = [utt(f.stem, audio=str(f), text=RAVDESS_TEXT[f.stem.split("-")[4]], corpus="ravdess") for f in files]
    out, quarantine, summary = transcribe(utts, backend="faster-whisper")
    assert quarantine == []
    for u in out:
        print(f"{u.id}: ref={u.extra['reference_text']!r} asr={u.text!r} wer={u.extra['wer']}")
    print("RAVDESS WER", summary["corpora"]["ravdess"]["wer"])
    assert summary["corpora"]["ravdess"]["wer"] <= 0.5
