"""Issue 14 item 7: an identical rerun of the steps reuses their results from the store, counted.

The second call of transcribe/features/train/train_fold/finalize on the same content does no
encoder pass, no ASR, no log-mel and no training epoch (the steps' own work counts say so, and
the model builder and encoder loader are made to fail), and gives byte-identical outputs; a
change of seed, preset or one audio file misses; an entry without its completion marker is never
used. On a local store and on SeaweedFS (S3)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emoflow import steps
from emoflow.corpora import read_manifest, write_manifest
from emoflow.corpora.synthetic import generate_demo_corpus, read_demo
from emoflow.storage import open_store
from emoflow.storage.results import PREFIX, ResultCache

TINY_WAV2VEC2 = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 4, 4],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "mask_time_prob": 0.0, "layerdrop": 0.0,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True,
}
FEATURES = {"n_mels": 128, "encoders": [{"source": "wav2vec2", "init": "random", "config": TINY_WAV2VEC2}],
            "embedding_options": {"batch_size": 8}}
N_UTTS = 24
FOLDS = ["fold1-S1", "fold2-S2", "fold3-S3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    generate_demo_corpus(root / "corpus", sessions=3, speakers_per_session=1, utterances_per_speaker=8)
    utts = read_demo(root / "corpus")
    assert len(utts) == N_UTTS
    write_manifest(root / "in.jsonl", utts)
    return root


def store_uri(kind: str, tmp_path: Path, request) -> str:
    return str(tmp_path / "store") if kind == "local" else request.getfixturevalue("s3_store").uri()


def forbid_work(monkeypatch):
    """A reused step must not even build a model or load an encoder."""
    import emoflow.audio.embeddings
    import emoflow.models

    def refuse(*args, **kwargs):
        raise AssertionError("work was done where the result should have been reused")

    monkeypatch.setattr(emoflow.models, "build_model", refuse)
    monkeypatch.setattr(emoflow.audio.embeddings, "load_encoder", refuse)
    monkeypatch.setattr(emoflow.audio.embeddings, "_ENCODERS", {})  # the process keeps loaded encoders


def computed(summary: dict) -> dict:
    """A step's work but encoder loads (an encoder stays loaded for the process: tests share one)."""
    return {k: v for k, v in summary["work"].items() if k != "encoder_loads"}


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_steps(corpus: Path, store: str, out: Path, *, fan_out: bool, **train) -> dict:
    """transcribe → features → train (or train_fold per fold → finalize) into `out`."""
    out.mkdir(parents=True)
    done = {"transcribe": steps.transcribe(str(corpus / "in.jsonl"), str(out / "t.jsonl"), "auto", store)}
    done["features"] = steps.features(str(out / "t.jsonl"), str(out / "f.jsonl"), store, FEATURES)
    args = dict(epochs=1, progress=False, **train)
    if not fan_out:
        done["train"] = steps.train(str(out / "f.jsonl"), store, "a1", "tiny", str(out / "model"),
                                    feature_config=FEATURES, **args)
        return done
    parts = []
    for fold in steps.plan_folds(str(out / "f.jsonl"), seed=args.get("seed", 0)):
        parts.append(str(out / f"{fold}.json"))
        done[fold] = steps.train_fold(str(out / "f.jsonl"), store, "a1", "tiny", fold, parts[-1], **args)
    done["finalize"] = steps.finalize(str(out / "f.jsonl"), store, "a1", "tiny", parts, str(out / "model"),
                                      feature_config=FEATURES, **args)
    return done


@pytest.mark.parametrize("kind, fan_out", [("local", False), ("local", True), ("s3", True)],
                         ids=["local-one-task", "local-fan-out", "s3-fan-out"])
def test_identical_rerun_does_no_encoder_pass_and_no_epoch(corpus, tmp_path, monkeypatch, request, kind, fan_out):
    store = store_uri(kind, tmp_path, request)
    first = run_steps(corpus, store, tmp_path / "first", fan_out=fan_out)
    assert computed(first["features"]) == {"encoder_passes": N_UTTS, "logmel": N_UTTS}
    trained = [first[s]["work"].get("epochs", 0) for s in first if s not in ("transcribe", "features")]
    assert all(n > 0 for n in trained)

    forbid_work(monkeypatch)
    second = run_steps(corpus, store, tmp_path / "second", fan_out=fan_out)
    for step, summary in second.items():
        assert summary["work"] == {}, step
    assert second["features"]["reused"] == {"embeddings": N_UTTS, "logmel": N_UTTS}
    if fan_out:
        assert [second[f]["reused"] for f in FOLDS] == [{"folds": 1}] * 3
        assert second["finalize"]["reused"] == {"final_fits": 1}
    else:
        assert second["train"]["reused"] == {"folds": 3, "final_fits": 1}
    # the same outputs, byte for byte: manifests, fold predictions, the model and its predictions
    a, b = files_of(tmp_path / "first"), files_of(tmp_path / "second")
    assert a.keys() == b.keys() and "model/model/model.safetensors" in a
    assert [name for name in a if a[name] != b[name]] == []


def test_one_task_train_and_fold_fan_out_share_their_results(corpus, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    one = run_steps(corpus, store, tmp_path / "one", fan_out=False)
    assert one["train"]["work"]["epochs"] > 0
    forbid_work(monkeypatch)
    fan = run_steps(corpus, store, tmp_path / "fan", fan_out=True)
    assert all(fan[s]["work"] == {} for s in fan)
    assert files_of(tmp_path / "one" / "model" / "model") == files_of(tmp_path / "fan" / "model" / "model")
    one_pred, fan_pred = (json.loads((tmp_path / p / "model" / "predictions.json").read_text()) for p in ("one", "fan"))
    assert one_pred == fan_pred


def yaml_preset(path: Path, **train) -> str:
    import yaml

    from emoflow.models import load_preset

    preset = load_preset("a1", "tiny")
    preset["train"].update(train)
    path.write_text(yaml.safe_dump(preset))
    return str(path)


def test_a_change_of_seed_preset_or_one_audio_file_misses(corpus, tmp_path):
    store = str(tmp_path / "store")
    run_steps(corpus, store, tmp_path / "first", fan_out=False)
    manifest = str(tmp_path / "first" / "f.jsonl")

    def fold(name: str, **kw) -> dict:
        kw = {"preset": "tiny", **kw}
        return steps.train_fold(manifest, store, "a1", kw.pop("preset"), "fold1-S1", str(tmp_path / f"{name}.json"),
                                epochs=1, progress=False, **kw)

    assert fold("same")["work"] == {}
    assert fold("seed", seed=1)["work"]["epochs"] > 0
    assert fold("preset", preset=yaml_preset(tmp_path / "lr.yaml", lr=0.01))["work"]["epochs"] > 0
    again = steps.train_fold(manifest, store, "a1", "tiny", "fold1-S1", str(tmp_path / "e2.json"), epochs=2,
                             progress=False)
    assert again["work"]["epochs"] > 0
    # asked not to reuse: everything is computed again
    assert fold("no-reuse", reuse_results=False)["work"]["epochs"] > 0
    redo = steps.features(str(tmp_path / "first" / "t.jsonl"), str(tmp_path / "redo.jsonl"), store, FEATURES,
                          reuse_results=False)
    assert redo["work"]["encoder_passes"] == N_UTTS and redo["work"]["logmel"] == N_UTTS

    # one audio file changes in place (same path, same id; ingest records the file's sha256, which
    # is all that changes with copy_audio false): only its features are computed, training misses
    utts = read_manifest(corpus / "in.jsonl")
    changed = tmp_path / "changed.wav"
    shutil.copy(utts[0].audio, changed)

    def featurize(name: str) -> dict:
        utts[0].audio = str(changed)
        utts[0].extra = {**utts[0].extra, "sha256": hashlib.sha256(changed.read_bytes()).hexdigest()}
        write_manifest(tmp_path / f"{name}.jsonl", utts)
        steps.transcribe(str(tmp_path / f"{name}.jsonl"), str(tmp_path / f"{name}-t.jsonl"), "auto", store)
        return steps.features(str(tmp_path / f"{name}-t.jsonl"), str(tmp_path / f"{name}-f.jsonl"), store, FEATURES)

    assert featurize("before")["work"]["logmel"] == 1
    wave, sr = sf.read(changed, dtype="float32")
    sf.write(changed, np.flip(wave).copy(), sr)
    feats = featurize("after")
    assert computed(feats) == {"encoder_passes": 1, "logmel": 1}
    assert feats["reused"] == {"embeddings": N_UTTS - 1, "logmel": N_UTTS - 1}
    part = steps.train_fold(str(tmp_path / "after-f.jsonl"), store, "a1", "tiny", "fold1-S1",
                            str(tmp_path / "a.json"), epochs=1, progress=False)
    assert part["work"]["epochs"] > 0


def test_an_entry_without_its_completion_marker_is_never_used(corpus, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    first = run_steps(corpus, store, tmp_path / "first", fan_out=False)
    st = open_store(store)
    markers = [k for k in st.list(f"{PREFIX}/final/") if k.endswith("/entry.json")]
    assert len(markers) == 1
    # a final fit killed while saving: its files are there, the marker is not
    st.delete(markers[0])
    second = run_steps(corpus, store, tmp_path / "second", fan_out=False)
    assert second["train"]["reused"] == {"folds": 3}
    assert 0 < second["train"]["work"]["epochs"] <= first["train"]["work"]["epochs"]
    # the new entry replaced the half one: one attempt left, and it is used from now on
    attempts = {k.split("/")[3] for k in st.list(markers[0].rsplit("/", 1)[0] + "/") if not k.endswith("entry.json")}
    assert len(attempts) == 1
    forbid_work(monkeypatch)
    third = run_steps(corpus, store, tmp_path / "third", fan_out=False)
    assert third["train"]["work"] == {} and third["train"]["reused"] == {"folds": 3, "final_fits": 1}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_result_cache_entries(kind, tmp_path, request):
    st = open_store(store_uri(kind, tmp_path, request))
    cache = ResultCache(st)
    src = tmp_path / "src"
    (src / "tokenizer").mkdir(parents=True)
    (src / "model.bin").write_bytes(b"\x00weights")
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    key = cache.key("unit", {"data": [1, 2]})
    assert key != cache.key("unit", {"data": [1, 3]}) and key.startswith("unit/")
    assert cache.lookup(key, tmp_path / "miss") is None

    # files written, marker not (a killed writer): a miss
    st.put_bytes(f"{PREFIX}/{key}/deadbeef0000/model.bin", b"half")
    assert cache.lookup(key, tmp_path / "half") is None
    assert cache.save(key, {"epochs": 3}, src) is True
    assert not [k for k in st.list(f"{PREFIX}/{key}/") if "deadbeef0000" in k]  # the half entry is gone
    assert cache.lookup(key, tmp_path / "hit") == {"epochs": 3}
    assert files_of(tmp_path / "hit") == files_of(src)

    # a second writer of the same key loses, keeps nothing, and the first entry stays
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.bin").write_bytes(b"other")
    assert cache.save(key, {"epochs": 4}, other) is False
    assert cache.lookup(key, tmp_path / "hit2") == {"epochs": 3}
    assert len({k.split("/")[3] for k in st.list(f"{PREFIX}/{key}/") if not k.endswith("entry.json")}) == 1

    # a changed file fails its checksum: a miss, and the destination gets nothing
    entry = st.get_json(f"{PREFIX}/{key}/entry.json")
    st.put_bytes(f"{PREFIX}/{key}/{entry['attempt']}/model.bin", b"\x00weightz")
    assert cache.lookup(key, tmp_path / "bad") is None
    assert not (tmp_path / "bad" / "model.bin").exists()

    # reuse=False ignores the entry and replaces it
    fresh = ResultCache(st, reuse=False)
    assert fresh.lookup(key, tmp_path / "x") is None
    assert fresh.save(key, {"epochs": 5}, src) is True
    assert cache.lookup(key, tmp_path / "hit3") == {"epochs": 5}


def test_transcribe_reuses_asr_results(tmp_path, monkeypatch):
    """ASR results are kept per utterance: a rerun neither loads the model nor decodes audio."""
    import emoflow.text.transcribe as tr
    from emoflow.corpora import Utterance

    loads = []

    class FakeASR:
        model_id = "fake/asr"

        def __call__(self, wave):
            return tr.ASRResult(f"{len(wave)} samples", [{"word": "x", "start": 0.0, "end": 0.1}])

    def get_backend(name, **options):
        loads.append(name)
        return FakeASR()

    monkeypatch.setattr(tr, "get_backend", get_backend)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"a{i}.wav")
        sf.write(paths[-1], np.full(1600 * (i + 2), 0.1, dtype=np.float32), 16000)
    utts = [Utterance(id=f"u{i}", audio=str(p), text=None, label="neutral", speaker="s", session="s", corpus="c")
            for i, p in enumerate(paths)]
    write_manifest(tmp_path / "in.jsonl", utts)
    store = str(tmp_path / "store")
    first = steps.transcribe(str(tmp_path / "in.jsonl"), str(tmp_path / "o1.jsonl"), "faster-whisper", store)
    assert first["work"] == {"asr": 3} and loads == ["faster-whisper"]
    second = steps.transcribe(str(tmp_path / "in.jsonl"), str(tmp_path / "o2.jsonl"), "faster-whisper", store)
    assert second["work"] == {} and second["reused"] == {"asr": 3} and loads == ["faster-whisper"]
    assert second["model"] == "fake/asr"
    assert (tmp_path / "o1.jsonl").read_bytes() == (tmp_path / "o2.jsonl").read_bytes()
    # another backend, or one changed audio file, is transcribed again
    third = steps.transcribe(str(tmp_path / "in.jsonl"), str(tmp_path / "o3.jsonl"), "pocketsphinx", store)
    assert third["work"] == {"asr": 3}
    sf.write(paths[1], np.full(1600 * 9, 0.2, dtype=np.float32), 16000)
    utts[1].extra = {"sha256": "changed"}
    write_manifest(tmp_path / "in.jsonl", utts)
    fourth = steps.transcribe(str(tmp_path / "in.jsonl"), str(tmp_path / "o4.jsonl"), "faster-whisper", store)
    assert fourth["work"] == {"asr": 1} and fourth["reused"] == {"asr": 2}
