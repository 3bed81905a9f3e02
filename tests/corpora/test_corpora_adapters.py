"""Each corpus adapter on a tiny fixture built in exactly its documented layout."""

from __future__ import annotations

import json

import pytest

from corpora.corpus_builders import (
    build_cremad,
    build_csv,
    build_demo,
    build_emodb,
    build_iemocap,
    build_meld,
    build_mosei,
    build_ravdess,
)
from emoflow.corpora import ADAPTERS, CorpusError, get_adapter, ingest, read_manifest
from emoflow.corpora.mosei import single_label
from emoflow.storage import open_store


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path / "store")


def by_id(result):
    return {u.id: u for u in result.utterances}


def test_registry_names_and_layout_docs():
    assert set(ADAPTERS) == {"iemocap", "meld", "mosei", "ravdess", "cremad", "emodb", "csv", "demo"}
    for name in ADAPTERS:
        mod = __import__(ADAPTERS[name].__module__, fromlist=["_"])
        assert "layout" in mod.__doc__.lower(), name
    assert get_adapter("CREMA-D").name == "cremad"
    with pytest.raises(CorpusError, match="unknown corpus 'timit'.*ravdess"):
        get_adapter("timit")


def test_ravdess(tmp_path, store):
    ids = build_ravdess(tmp_path / "rav", ext="flac")
    r = ingest("ravdess", str(tmp_path / "rav"), store)
    assert sorted(by_id(r)) == sorted(ids) and r.quarantine == []
    u = by_id(r)["03-01-05-01-02-01-02"]
    assert (u.label, u.speaker, u.session, u.text) == ("angry", "Actor_02", "Actor_02", "Dogs are sitting by the door")
    assert u.extra["gender"] == "female" and u.extra["format"] == "flac"
    assert r.summary["speakers"] == 2 and r.summary["labels"] == {"angry": 4, "happy": 4, "neutral": 4}


def test_ravdess_song_excluded_by_protocol(tmp_path, store):
    build_ravdess(tmp_path / "rav", actors=(1,))
    from corpora.corpus_builders import write_wav

    write_wav(tmp_path / "rav" / "Actor_01" / "03-02-03-01-01-01-01.wav")
    r = ingest("ravdess", str(tmp_path / "rav"), store)
    assert r.summary["excluded"] == 1 and r.summary["in"] == 6
    assert r.excluded[0]["id"] == "03-02-03-01-01-01-01"
    r2 = ingest("ravdess", str(tmp_path / "rav"), store, options={"include_song": True})
    assert r2.summary["accepted"] == 7


def test_iemocap_four_class_protocol(tmp_path, store):
    build_iemocap(tmp_path)
    r = ingest("iemocap", str(tmp_path), store)  # root above IEMOCAP_full_release also works
    utts = by_id(r)
    # fru and xxx are excluded by protocol and counted, exc merged into happy
    assert r.summary["excluded_by_label"] == {"fru": 1, "xxx": 1}
    assert len(utts) == 8 and r.summary["in"] == 8 and r.summary["found"] == 10
    u = utts["Ses01F_impro01_F001"]
    assert (u.label, u.extra["raw_label"], u.session, u.speaker) == ("happy", "exc", "Ses01", "Ses01F")
    m = utts["Ses02M_impro02_M000"]
    assert (m.speaker, m.session, m.text, m.extra["mode"]) == ("Ses02M", "Ses02", "I miss her.", "impro")
    assert utts["Ses01F_impro01_M001"].text == "No, that's not it!"
    assert utts["Ses01F_script01_1_F000"].extra["mode"] == "script"
    rep = r.summary["notes"]["scripted_text_repeats"]
    assert rep["texts_in_several_sessions"] == 1 and rep["utterances"] == 2
    assert rep["examples"][0] == {"text": "what's he going to say?", "sessions": ["Ses01", "Ses02"]}
    assert set(r.summary["labels"]) == {"neutral", "happy", "sad", "angry"}
    # without merging excited, exc becomes an excluded label
    r2 = ingest("iemocap", str(tmp_path / "IEMOCAP_full_release"), store, options={"merge_excited": False})
    assert r2.summary["excluded_by_label"] == {"exc": 1, "fru": 1, "xxx": 1}


def test_meld_text_only_splits_dialogue_order_typography(tmp_path, store):
    build_meld(tmp_path / "meld")
    r = ingest("meld", str(tmp_path / "meld"), store)
    assert r.summary["notes"]["text_only"] is True and r.summary["text_only"] == 6
    assert [u.id for u in r.utterances] == [
        "train_dia0_utt0", "train_dia0_utt1", "train_dia1_utt0", "train_dia1_utt1", "dev_dia0_utt0", "dev_dia0_utt1"]
    u = by_id(r)
    assert u["train_dia0_utt1"].text == "You must’ve had your hands full."
    assert u["train_dia0_utt0"].text == "also I was the point person…"
    assert u["dev_dia0_utt1"].text == "What’s that?"  # cp1252 file decoded
    assert r.summary["notes"]["cp1252_files"] == ["dev_sent_emo.csv"]
    assert u["dev_dia0_utt0"].split == "dev" and u["dev_dia0_utt0"].dialogue == "dev_dia0"
    assert u["train_dia1_utt1"].label == "anger" and u["train_dia1_utt1"].speaker == "Ross"
    assert u["train_dia0_utt0"].extra["episode_start"] == pytest.approx(976.059)


def test_meld_mojibake_repaired(tmp_path, store):
    root = build_meld(tmp_path / "meld")
    text = (root / "train_sent_emo.csv").read_text(encoding="utf-8").replace("That’s", "Thatâ€™s")
    (root / "train_sent_emo.csv").write_text(text, encoding="utf-8")
    r = ingest("meld", str(root), store)
    assert by_id(r)["train_dia1_utt0"].text == "That’s great!"
    assert r.summary["notes"]["typography_repaired"] == 1


def test_meld_with_mp4_media(tmp_path, store):
    build_meld(tmp_path / "meld", media=True)
    r = ingest("meld", str(tmp_path / "meld"), store)
    assert r.quarantine == [] and r.summary["accepted"] == 6
    u = by_id(r)["train_dia1_utt0"]
    assert u.audio.endswith(".mp4") and u.extra["format"] == "mp4" and u.extra["sample_rate"] == 16000
    assert 0.3 < u.extra["duration"] < 0.6
    # the stored object is the original mp4, not a re-encoding
    key = u.audio.split("/store/", 1)[1]
    assert store.get_bytes(key) == (tmp_path / "meld" / "train_splits" / "dia1_utt0.mp4").read_bytes()


def test_mosei_single_label_protocol_and_segments(tmp_path, store):
    build_mosei(tmp_path / "mosei")
    r = ingest("mosei", str(tmp_path / "mosei"), store)
    u = by_id(r)
    assert sorted(u) == ["vidA[0]", "vidA[1]", "vidB[0]"]
    assert u["vidA[0]"].label == "happy" and u["vidA[1]"].label == "angry" and u["vidB[0]"].label == "sad"
    assert (u["vidA[1]"].start, u["vidA[1]"].end) == (pytest.approx(1.2), pytest.approx(2.0))
    assert u["vidA[1]"].text == "But the end was awful." and u["vidA[1]"].split == "train"
    assert u["vidB[0]"].split == "test" and u["vidB[0]"].speaker == "vidB"
    assert u["vidA[1]"].extra["emotions"]["disgust"] == pytest.approx(0.333, abs=1e-3)
    assert u["vidA[0]"].extra["sentiment"] == 1.0
    assert r.summary["excluded_by_label"] == {"none": 1, "tie": 1}
    # both segments of vidA share one stored wav
    assert u["vidA[0]"].audio == u["vidA[1]"].audio and r.uploaded == 2
    r2 = ingest("mosei", str(tmp_path / "mosei"), store, options={"none_as_neutral": True, "tie_break": "order"})
    u2 = by_id(r2)
    assert u2["vidA[2]"].label == "neutral" and u2["vidB[1]"].label == "happy"


def test_mosei_single_label_rule():
    assert single_label([0, 0.5, 0, 0, 0, 0]) == ("sad", "")
    assert single_label([0, 0, 0, 0, 0, 0]) == (None, "none")
    assert single_label([0.3, 0, 0.3, 0, 0, 0]) == (None, "tie")
    assert single_label([0.3, 0, 0.3, 0, 0, 0], tie_break="order") == ("happy", "")


def test_mosei_without_raw_prefix(tmp_path, store):
    build_mosei(tmp_path / "m", raw=False)
    assert ingest("mosei", str(tmp_path / "m"), store).summary["accepted"] == 3


def test_cremad(tmp_path, store):
    build_cremad(tmp_path / "c")
    r = ingest("crema-d", str(tmp_path / "c"), store)
    u = by_id(r)
    assert (u["1001_DFA_ANG_XX"].label, u["1001_DFA_ANG_XX"].text) == ("angry", "Don't forget a jacket.")
    assert u["1002_WSI_SAD_LO"].extra == {**u["1002_WSI_SAD_LO"].extra, "gender": "female", "level": "low"}
    assert u["1001_IEO_HAP_HI"].session == "1001" and r.summary["sessions"] == 2


def test_emodb(tmp_path, store):
    build_emodb(tmp_path / "e")
    r = ingest("emodb", str(tmp_path / "e"), store)
    u = by_id(r)
    assert (u["03a01Fa"].label, u["03a01Fa"].speaker, u["03a01Fa"].text) == (
        "happy", "03", "Der Lappen liegt auf dem Eisschrank.")
    assert u["08b03Ta"].label == "sad" and u["08b03Ta"].extra["gender"] == "female"
    assert u["16a05Ld"].label == "boredom" and "Stück" in u["16a05Ld"].text
    assert u["03b10Wb"].label == "angry"


def test_csv_manifest_default_columns(tmp_path, store):
    build_csv(tmp_path / "c")
    r = ingest("csv", str(tmp_path / "c"), store)
    u = by_id(r)
    assert sorted(u) == ["wav/a", "wav/b", "wav/sub/c"]
    assert u["wav/sub/c"].text == "Well, fine." and u["wav/sub/c"].extra["format"] == "flac"


def test_csv_manifest_custom_columns_label_map_tsv(tmp_path, store):
    root = build_csv(tmp_path / "c", header="file\tsentence\temotion\twho\tkey\tnote", name="data.tsv",
                     rows=["wav/a.wav\tHi.\tHAP\tp1\tu1\tloud", "wav/b.wav\tNo.\tANG\tp2\tu2\t"])
    r = ingest("csv", str(root), store, options={
        "manifest": "data.tsv",
        "columns": {"path": "file", "text": "sentence", "label": "emotion", "speaker": "who", "id": "key"},
        "label_map": {"HAP": "happy", "ANG": "angry"}})
    u = by_id(r)
    assert (u["u1"].label, u["u1"].text, u["u1"].session, u["u1"].extra["note"]) == ("happy", "Hi.", "p1", "loud")
    assert u["u2"].extra["raw_label"] == "ANG"


def test_jsonl_manifest(tmp_path, store):
    root = build_csv(tmp_path / "j", rows=[], name="unused.csv")
    recs = [{"path": "wav/a.wav", "label": "sad", "speaker": "s", "text": "Oh.", "start": 0.0, "end": 0.2},
            {"path": "wav/b.wav", "label": "sad", "speaker": "t"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    r = ingest("jsonl", str(root), store, options={"manifest": "manifest.jsonl"})
    assert by_id(r)["wav/a"].end == pytest.approx(0.2) and by_id(r)["wav/a"].extra["duration"] == pytest.approx(0.2)


def test_demo_corpus_folder(tmp_path, store):
    build_demo(tmp_path / "demo")
    r = ingest("demo", str(tmp_path / "demo"), store)
    assert len(r.utterances) == 4 and r.quarantine == []
    u = r.utterances[0]
    assert u.audio.startswith(store.uri("audio") + "/demo/") and u.extra["synthetic"] is True
    assert read_manifest_from(store, r.manifest_key) == r.utterances


def read_manifest_from(store, key):
    import io

    return read_manifest(io.StringIO(store.get_bytes(key).decode()))


def test_missing_layout_is_a_clear_error(tmp_path, store):
    (tmp_path / "empty").mkdir()
    for corpus, match in [("ravdess", "Actor_NN"), ("iemocap", "EmoEvaluation"), ("meld", "train_sent_emo.csv"),
                          ("mosei", "CMU_MOSEI_Labels.csd"), ("cremad", "AudioWAV"), ("emodb", "wav/03a01Fa"),
                          ("csv", "manifest"), ("demo", "manifest.jsonl")]:
        with pytest.raises(CorpusError, match=match):
            ingest(corpus, str(tmp_path / "empty"), store)
    with pytest.raises(CorpusError, match="does not exist"):
        ingest("ravdess", str(tmp_path / "nope"), store)


# --- issue 16, defect 4: Makhmudov et al. 2024's protocols -----------------------------------

# MELD 1.0's emotion counts over train + dev + test (train_sent_emo/dev_sent_emo/test_sent_emo)
MELD_TOTALS = {"neutral": 6436, "joy": 2308, "surprise": 1636, "anger": 1607, "sadness": 1002,
               "disgust": 361, "fear": 358}
# the paper's Table 1 (its "Happy" is MELD's joy): train / test per emotion
MAKHMUDOV_MELD = {"joy": (1846, 462), "anger": (1285, 322), "disgust": (288, 73), "sadness": (801, 201),
                  "surprise": (1308, 328), "neutral": (5148, 1288)}


def build_meld_counts(root, totals):
    """A text-only MELD with the given emotion counts, spread over the three split files."""
    from corpora.corpus_builders import MELD_HEADER, meld_row

    rows = {s: [MELD_HEADER] for s in ("train", "dev", "test")}
    i = 0
    for emotion, n in totals.items():
        for _ in range(n):
            split = ("train", "train", "train", "dev", "test")[i % 5]
            rows[split].append(meld_row(i, f"line {i}", f"spk{i % 7}", emotion, i // 10, i % 10))
            i += 1
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        (root / f"{split}_sent_emo.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_meld_makhmudov2024_resplit_gives_the_papers_table1(tmp_path):
    from emoflow.corpora.base import open_source

    root = build_meld_counts(tmp_path / "meld", MELD_TOTALS)
    adapter = get_adapter("meld")
    scan = adapter.scan(open_source(str(root)), adapter.options({"protocol": "makhmudov2024"}))
    assert scan.labels == tuple(sorted(MAKHMUDOV_MELD))  # 6 classes, no fear
    assert len(scan.excluded) == 358 and {e["label"] for e in scan.excluded} == {"fear"}
    counts = scan.notes["resplit_counts"]
    assert counts == {"test": {e: t for e, (_, t) in sorted(MAKHMUDOV_MELD.items())},
                      "train": {e: n for e, (n, _) in sorted(MAKHMUDOV_MELD.items())}}
    splits = [u.split for u in scan.items]
    assert splits.count("train") == 10676 and splits.count("test") == 2674  # the paper's Sec. 4.2
    assert {u.extra["official_split"] for u in scan.items} == {"train", "dev", "test"}
    # the official protocol (the default) keeps the 7 emotions and the official splits
    official = adapter.scan(open_source(str(root)), adapter.options({}))
    assert len(official.items) == sum(MELD_TOTALS.values()) and not official.excluded
    assert {u.split for u in official.items} == {"train", "dev", "test"}


def test_meld_makhmudov2024_is_seeded_and_checked(tmp_path, store):
    root = build_meld_counts(tmp_path / "meld", {"joy": 10, "anger": 5, "fear": 2})
    a = ingest("meld", str(root), store, options={"protocol": "makhmudov2024"})
    b = ingest("meld", str(root), store, options={"protocol": "makhmudov2024"})
    c = ingest("meld", str(root), store, options={"protocol": "makhmudov2024", "resplit_seed": 1})
    split = lambda r: {u.id: u.split for u in r.utterances}  # noqa: E731
    assert split(a) == split(b) != split(c)
    assert sorted(split(a).values()).count("train") == 8 + 4
    with pytest.raises(CorpusError, match="protocol must be one of"):
        ingest("meld", str(root), store, options={"protocol": "paper"})
    with pytest.raises(CorpusError, match="label_map"):
        ingest("meld", str(root), store, options={"protocol": "makhmudov2024", "label_map": {"joy": "happy"}})


def test_mosei_makhmudov2024_multilabel_truth_and_resplit(tmp_path, store):
    build_mosei(tmp_path / "mosei")
    r = ingest("mosei", str(tmp_path / "mosei"), store, options={"protocol": "makhmudov2024"})
    u = by_id(r)
    # every segment with an emotion present is kept (the tie vidB[1] is resolved in order), no neutral
    assert sorted(u) == ["vidA[0]", "vidA[1]", "vidB[0]", "vidB[1]"]
    assert r.summary["excluded_by_label"] == {"none": 1}
    assert u["vidA[1]"].extra["emotion_presence"] == ["sad", "angry", "disgust"]  # intensity > 0
    assert u["vidB[1]"].extra["emotion_presence"] == ["happy", "sad"] and u["vidB[1]"].label == "happy"
    assert {x.split for x in u.values()} <= {"train", "test"}
    assert u["vidB[0]"].extra["official_split"] == "test"
    with pytest.raises(CorpusError, match="no neutral"):
        ingest("mosei", str(tmp_path / "mosei"), store, options={"protocol": "makhmudov2024", "none_as_neutral": True})
