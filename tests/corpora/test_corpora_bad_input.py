"""Bad input across the adapters: each kind ends as a quarantine entry with a clear reason
(or, for a corpus-level fault, a clear error) -- never a crash, never a silent drop.

Distinct kinds of bad input covered here (49):
 audio:  1 corrupt bytes, 2 empty file, 3 header-only WAV (0 samples), 4 NaN samples,
         5 Inf samples, 6 wrong (too low) sample rate, 7 stereo whose channels cancel,
         8 digital silence, 9 too short, 10 too long, 11 too many channels,
         12 missing file, 13 mp4 without an audio stream (MELD), 14 truncated FLAC
 paths:  15 '..' traversal, 16 absolute path, 17 symlink leaving the root, 18 URI as path
 CSV:    19 too many fields, 20 too few fields, 21 empty required field, 22 non-numeric
         start, 23 missing required column (error), 24 unknown label, 25 duplicate id,
         26 undecodable (non-UTF-8) text, 27 control character in text, 28 malformed
         JSONL line, 29 JSONL line that is not an object
 IEMOCAP: 30 malformed evaluation line, 31 missing transcript, 32 unknown raw label,
         33 transcript file not UTF-8
 RAVDESS: 34 bad file name, 35 actor folder mismatch, 36 unknown emotion code
 CREMA-D: 37 unknown sentence code;  EmoDB: 38 unknown emotion letter, 39 unknown speaker
 MELD:   40 non-integer Dialogue_ID, 41 unknown emotion, 42 missing mp4, 43 CSV lacking a
         column (error)
 MOSEI:  44 segment past the end of the audio, 45 labels file not HDF5 (error),
         46 segment without transcript
 demo:   47 record with an unknown field
 corpus: 48 too many bad items (IngestError naming the worst reasons), 49 unknown option
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import soundfile as sf

from corpora.corpus_builders import (
    build_cremad,
    build_csv,
    build_demo,
    build_emodb,
    build_iemocap,
    build_meld,
    build_mosei,
    build_ravdess,
    write_mp4,
    write_wav,
)
from emoflow.corpora import CorpusError, IngestError, ingest
from emoflow.storage import open_store


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path / "store")


def reasons(result) -> dict:
    """id -> reason of every quarantine entry (entries must be complete)."""
    for q in result.quarantine:
        assert set(q) == {"id", "source", "reason", "detail"} and q["detail"], q
    s = result.summary
    assert s["in"] == s["accepted"] + s["quarantined"] == len(result.utterances) + len(result.quarantine)
    return {q["id"] if q["id"] is not None else q["source"]: q["reason"] for q in result.quarantine}


def test_bad_audio_and_csv_rows_are_quarantined(tmp_path, store):
    root = tmp_path / "zoo"
    good = [f"g{i}" for i in range(3)]
    for g in good:
        write_wav(root / f"{g}.wav", g)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(200))
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "noframes.wav", np.zeros((0,), np.float32), 16000)
    nan = np.full(4800, 0.1, np.float32)
    nan[100] = np.nan
    write_wav(root / "nan.wav", data=nan, subtype="FLOAT")
    inf = np.full(4800, 0.1, np.float32)
    inf[7] = np.inf
    write_wav(root / "inf.wav", data=inf, subtype="FLOAT")
    write_wav(root / "lowrate.wav", seconds=1.0, sr=2000)
    x = np.sin(np.linspace(0, 300, 4800)).astype(np.float32) * 0.5
    write_wav(root / "cancel.wav", data=np.stack([x, -x], axis=1))
    write_wav(root / "stereo_ok.wav", "st", channels=2)
    write_wav(root / "silence.wav", data=np.zeros(4800, np.float32))
    write_wav(root / "short.wav", seconds=0.05)
    write_wav(root / "long.wav", seconds=3.0)
    write_wav(root / "tenchan.wav", data=np.tile(np.float32(0.2) * np.ones((4800, 1), np.float32), (1, 10)))
    write_wav(root / "trunc.flac", "tr", fmt="FLAC", seconds=1.0)
    (root / "trunc.flac").write_bytes((root / "trunc.flac").read_bytes()[:60])
    write_wav(tmp_path / "outside.wav", "outside")
    (root / "link.wav").symlink_to(tmp_path / "outside.wav")
    rows = [f"{g}.wav,fine,happy,s1" for g in good] + [
        f"{n}.wav,x,happy,s1" for n in ("corrupt", "empty", "noframes", "nan", "inf", "lowrate", "cancel",
                                         "stereo_ok", "silence", "short", "long", "tenchan", "missing", "link")
    ] + [
        "trunc.flac,x,happy,s1",
        "../outside.wav,x,happy,s1",
        "/etc/passwd,x,happy,s1",
        "s3://other-bucket/x.wav,x,happy,s1",
        "g0.wav,x,happy,s1,EXTRA",           # too many fields
        "g1.wav,x,happy",                     # too few fields
        "g2.wav,x,happy,",                    # empty speaker
        "g0.wav,x,grumpy,s1",                 # duplicate id (g0 again)
    ]
    build_csv(root, rows=rows, header="path,text,label,speaker", audio=())
    # append raw bytes: an undecodable row and a control-character row (ids u1/u2 via their own paths)
    write_wav(root / "u1.wav", "u1")
    write_wav(root / "u2.wav", "u2")
    with open(root / "manifest.csv", "ab") as f:
        f.write(b"u1.wav,caf\xe9 latin-1,happy,s1\n")
        f.write(b"u2.wav,nul\x00inside,happy,s1\n")
    r = ingest("csv", str(root), store, options={"labels": ["happy", "sad"]}, max_bad_share=1.0, max_duration=2.0)
    got = reasons(r)
    assert sorted(u.id for u in r.utterances) == ["g0", "g1", "g2", "stereo_ok"]
    assert {u.id: u.extra["channels"] for u in r.utterances}["stereo_ok"] == 2
    expect = {
        "corrupt": "undecodable_audio", "empty": "empty_file", "noframes": "empty_audio",
        "nan": "nonfinite_samples", "inf": "nonfinite_samples", "lowrate": "bad_sample_rate",
        "cancel": "silent", "silence": "silent", "short": "too_short", "long": "too_long",
        "tenchan": "too_many_channels", "trunc": "undecodable_audio", "missing": "missing_file",
        "link": "path_escape", "../outside": "path_escape", "/etc/passwd": "path_escape",
        "s3://other-bucket/x": "path_escape", "u1": "undecodable_text", "u2": "bad_text",
    }
    for k, v in expect.items():
        assert got.get(k) == v, (k, got.get(k), got)
    by_src = {q["source"]: q for q in r.quarantine}
    assert by_src["manifest.csv:23"]["reason"] == "bad_row" and "more fields" in by_src["manifest.csv:23"]["detail"]
    assert by_src["manifest.csv:24"]["reason"] == "bad_row" and "fewer fields" in by_src["manifest.csv:24"]["detail"]
    assert by_src["manifest.csv:25"]["reason"] == "bad_row" and "empty speaker" in by_src["manifest.csv:25"]["detail"]
    dup = [q for q in r.quarantine if q["id"] == "g0" and q["reason"] == "duplicate_id"]
    assert len(dup) == 1 and "g0.wav" in dup[0]["detail"]
    assert "cancel in the mono mix-down" in next(q["detail"] for q in r.quarantine if q["id"] == "cancel")
    assert "0xe9" in next(q["detail"] for q in r.quarantine if q["id"] == "u1")
    assert r.summary["quarantine_by_reason"]["path_escape"] == 4
    # nothing from outside the corpus root was copied into the store
    outside_sha = hashlib.sha256((tmp_path / "outside.wav").read_bytes()).hexdigest()
    assert len(store.list("audio/")) == 4 and not any(outside_sha in k for k in store.list("audio/"))


def test_loud_float_audio_and_decoder_errors_are_quarantined_naming_the_file(tmp_path, store):
    """A float WAV of 1e18 (which later made the predictor answer 500) is quarantined, not accepted;
    decoder errors name the file, never an object repr with a heap address."""
    root = tmp_path / "loud"
    write_wav(root / "ok.wav", "ok")
    write_wav(root / "loud.wav", data=np.full(4800, 1e18, np.float32), subtype="FLOAT")
    loud_late = np.full(16000, 0.1, np.float32)
    loud_late[-3] = -3e6
    write_wav(root / "late.wav", data=loud_late, subtype="FLOAT")
    (root / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(256)))
    rows = [f"{n}.wav,x,happy,s1" for n in ("ok", "loud", "late", "junk")]
    build_csv(root, rows=rows, header="path,text,label,speaker", audio=())
    r = ingest("csv", str(root), store, options={"labels": ["happy", "sad"]}, max_bad_share=1.0)
    assert [u.id for u in r.utterances] == ["ok"]
    by_id = {q["id"]: q for q in r.quarantine}
    assert by_id["loud"]["reason"] == by_id["late"]["reason"] == "bad_amplitude"
    assert "loud.wav" in by_id["loud"]["detail"] and "1e+18" in by_id["loud"]["detail"]
    assert by_id["junk"]["reason"] == "undecodable_audio" and "junk.wav" in by_id["junk"]["detail"]
    assert not any(" at 0x" in q["detail"] for q in r.quarantine), r.quarantine


def test_unknown_label_with_label_map_and_bad_numbers(tmp_path, store):
    root = build_csv(tmp_path / "c", header="path,label,speaker,start,end", rows=[
        "wav/a.wav,H,s1,0,0.2", "wav/b.wav,Q,s2,,", "wav/sub/c.flac,H,s1,zero,0.2"])
    r = ingest("csv", str(root), store, options={"label_map": {"H": "happy"}}, max_bad_share=1.0)
    got = reasons(r)
    assert got["wav/b"] == "unknown_label" and got["wav/sub/c"] == "bad_row"
    assert "'zero' is not a number" in r.quarantine[-1]["detail"]


def test_csv_missing_required_column_is_an_error(tmp_path, store):
    root = build_csv(tmp_path / "c", header="file,label,speaker", rows=["wav/a.wav,happy,s"])
    with pytest.raises(CorpusError, match=r"lacks required column\(s\) path \(column 'path'\); header is \['file'"):
        ingest("csv", str(root), store)


def test_jsonl_bad_lines(tmp_path, store):
    root = build_csv(tmp_path / "j", rows=[], name="x.csv")
    (root / "manifest.jsonl").write_text(
        '{"path": "wav/a.wav", "label": "sad", "speaker": "s"}\n{"path": "wav/b.wav", "label": \n[1, 2]\n'
        '{"path": "wav/sub/c.flac", "label": {"x": 1}, "speaker": "s"}\n')
    r = ingest("csv", str(root), store, options={"manifest": "manifest.jsonl"}, max_bad_share=1.0)
    got = reasons(r)
    assert got["manifest.jsonl:2"] == "bad_row" and got["manifest.jsonl:3"] == "bad_row"
    assert got["wav/sub/c"] == "bad_row"
    assert [u.id for u in r.utterances] == ["wav/a"]


def test_iemocap_bad_lines_transcripts_labels(tmp_path, store):
    root = build_iemocap(tmp_path)
    ev = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    ev.write_text(ev.read_text() + "[12.0 - oops]\tSes01F_impro01_F009\tneu\t[1, 2, 3]\n"
                  "[20.0000 - 21.0000]\tSes01F_impro01_M009\tzzz\t[1.0, 2.0, 3.0]\n"
                  "[22.0000 - 23.0000]\tSes01F_impro01_F010\tsad\t[1.0, 2.0, 3.0]\n")
    write_wav(root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F010.wav")
    (root / "Session2/dialog/transcriptions/Ses02M_impro02.txt").write_bytes(b"Ses02M_impro02_M000 [1-2]: caf\xe9\n")
    r = ingest("iemocap", str(root), store, max_bad_share=1.0)
    got = reasons(r)
    assert got["Session1/dialog/EmoEvaluation/Ses01F_impro01.txt:11"] == "bad_row"
    assert got["Ses01F_impro01_M009"] == "unknown_label"
    assert got["Ses01F_impro01_F010"] == "missing_text"
    assert got["Ses02M_impro02_M000"] == got["Ses02M_impro02_F000"] == "undecodable_text"


def test_ravdess_bad_names(tmp_path, store):
    root = tmp_path / "rav"
    build_ravdess(root, actors=(1,))
    write_wav(root / "Actor_01" / "hello.wav")
    write_wav(root / "Actor_01" / "03-01-03-01-01-01-02.wav")   # actor 02 in Actor_01
    write_wav(root / "Actor_01" / "03-01-09-01-01-01-01.wav")   # emotion 09
    (root / "Actor_01" / ".DS_Store").write_bytes(b"junk")       # ignored, counted
    r = ingest("ravdess", str(root), store, max_bad_share=1.0)
    got = reasons(r)
    assert got == {"hello": "bad_filename", "03-01-03-01-01-01-02": "speaker_mismatch",
                   "03-01-09-01-01-01-01": "unknown_label"}
    assert r.summary["notes"]["ignored_hidden_files"] == 1


def test_cremad_and_emodb_bad_names(tmp_path, store):
    build_cremad(tmp_path / "c", names=("1001_DFA_ANG_XX", "1001_XYZ_ANG_XX", "1002_IEO_HAP_HI"))
    assert reasons(ingest("cremad", str(tmp_path / "c"), store, max_bad_share=1.0)) == {"1001_XYZ_ANG_XX": "bad_filename"}
    build_emodb(tmp_path / "e", names=("03a01Fa", "03a01Xa", "99a01Fa"))
    got = reasons(ingest("emodb", str(tmp_path / "e"), store, max_bad_share=1.0))
    assert got == {"03a01Xa": "unknown_label", "99a01Fa": "bad_filename"}


def test_meld_bad_rows_and_missing_media(tmp_path, store):
    root = build_meld(tmp_path / "meld", media=True)
    with open(root / "train_sent_emo.csv", "a", encoding="utf-8") as f:
        f.write('5,"Hi.",Joey,neutral,neutral,two,0,8,21,"00:00:01,000","00:00:02,000"\n')
        f.write('6,"Hey.",Joey,bored,neutral,2,1,8,21,"00:00:01,000","00:00:02,000"\n')
        f.write('7,"Where is it?",Joey,neutral,neutral,2,2,8,21,"00:00:01,000","00:00:02,000"\n')
    (root / "train_splits" / "dia0_utt0.mp4").unlink()
    write_mp4(root / "dev_splits_complete" / "dia0_utt1.mp4", "x", audio=False)
    r = ingest("meld", str(root), store, max_bad_share=1.0)
    got = reasons(r)
    assert got["train_sent_emo.csv:6"] == "bad_row"
    assert got["train_dia2_utt1"] == "unknown_label"
    assert got["train_dia2_utt2"] == "missing_file" and got["train_dia0_utt0"] == "missing_file"
    assert got["dev_dia0_utt1"] == "undecodable_audio"
    assert "no audio stream" in next(q["detail"] for q in r.quarantine if q["id"] == "dev_dia0_utt1")


def test_meld_missing_column_is_an_error(tmp_path, store):
    root = build_meld(tmp_path / "meld")
    (root / "train_sent_emo.csv").write_text("Sr No.,Utterance,Speaker,Emotion\n1,Hi,Joey,joy\n")
    with pytest.raises(CorpusError, match=r"train_sent_emo.csv lacks column\(s\) \['Dialogue_ID', 'Utterance_ID'\]"):
        ingest("meld", str(root), store)


def test_mosei_bad_segments_and_texts(tmp_path, store):
    root = build_mosei(tmp_path / "m", videos={
        "v1": (1.0, [(0.0, 0.8, [1, 1, 0, 0, 0, 0, 0], "ok"), (0.5, 3.0, [1, 0, 1, 0, 0, 0, 0], "past the end")]),
        "v2": (1.0, [(0.0, 0.8, [1, 0, 0, 1, 0, 0, 0], "text")]),
    })
    lines = (root / "Raw/Transcript/Segmented/Combined/v2.txt")
    lines.write_text("v2___0___5.0___6.0___another segment\n")
    r = ingest("mosei", str(root), store, max_bad_share=1.0)
    got = reasons(r)
    assert got == {"v1[1]": "bad_segment", "v2[0]": "missing_text"}
    detail = next(q["detail"] for q in r.quarantine if q["id"] == "v1[1]")
    assert "segment [0.500, 3.000] s not inside Raw/Audio/Full/WAV_16000/v1.wav (1.000 s)" in detail


def test_mosei_labels_not_hdf5_is_an_error(tmp_path, store):
    root = build_mosei(tmp_path / "m")
    (root / "CMU_MOSEI_Labels.csd").write_bytes(b"not hdf5 at all")
    with pytest.raises(CorpusError, match="not a readable HDF5 file"):
        ingest("mosei", str(root), store)


def test_demo_bad_record(tmp_path, store):
    root = build_demo(tmp_path / "d")
    with open(root / "manifest.jsonl", "a") as f:
        f.write('{"id": "x", "audio": "wav/x.wav", "label": "sad", "speaker": "v", "session": "S1", '
                '"corpus": "demo", "colour": "red"}\n')
    r = ingest("demo", str(root), store, max_bad_share=1.0)
    assert reasons(r) == {"x": "bad_row"} and "unknown fields ['colour']" in r.quarantine[0]["detail"]


def test_too_many_bad_items_stops_with_worst_reasons(tmp_path, store):
    root = tmp_path / "bad"
    rows = []
    for i in range(6):
        (root / f"c{i}.wav").parent.mkdir(parents=True, exist_ok=True)
        (root / f"c{i}.wav").write_bytes(b"garbage")
        rows.append(f"c{i}.wav,x,happy,s")
    rows += [f"m{i}.wav,x,happy,s" for i in range(3)]
    rows += [f"ok{i}.wav,x,happy,s" for i in range(3)]
    build_csv(root, rows=rows, header="path,text,label,speaker", audio=tuple(f"ok{i}.wav" for i in range(3)))
    with pytest.raises(IngestError, match=r"9 of 12 utterances \(75%\).*max_bad_share=20%.*"
                                          r"undecodable_audio x6 \(e\.g\. c0\.wav.*missing_file x3") as exc:
        ingest("csv", str(root), store)
    assert exc.value.summary["quarantined"] == 9 and len(exc.value.quarantine) == 9
    failed = store.list("manifests/csv/failed/")
    assert any(k.endswith("quarantine.jsonl") for k in failed)
    assert not store.list("manifests/csv/") or all("/failed/" in k for k in store.list("manifests/csv/"))
    # a looser threshold lets it through, with the same quarantine
    assert len(ingest("csv", str(root), store, max_bad_share=0.8).quarantine) == 9


def test_unknown_option_is_an_error(tmp_path, store):
    build_ravdess(tmp_path / "r", actors=(1,))
    with pytest.raises(CorpusError, match=r"unknown option\(s\) \['include_songs'\]; known: \['include_song'\]"):
        ingest("ravdess", str(tmp_path / "r"), store, options={"include_songs": True})
