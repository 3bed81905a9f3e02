"""Text encoders (BERT family, MPNet, ...) from offline assets, local folders, s3:// mirrors or a hub.

    load_text_encoder(spec) -> (tokenizer, model)

spec keys:
  source     "minilm" | "mpnet" (offline assets), a local folder, "s3://bucket/prefix" or
             "file://..." (a mirrored folder), a hub id (needs a reachable hub or a warm cache), or
             a family name ("bert", "mpnet", "roberta", ...) for a random init from defaults.
  init       "pretrained" (default) or "random" (architecture from the source's config.json, or the
             family defaults, updated with "config"; no weights are read).
  config     dict of config overrides, used for init "random" only.
  config_dict  a full config (``model.config.to_dict()``); with init "random" it is used as is and
             the source is never touched (how saved models are rebuilt offline).
  family     model_type to use when the source is a hub id and init is "random".
  tokenizer  where the tokenizer comes from (default: the source; for a family name the matching
             offline asset). ``False`` means no tokenizer.
  freeze     true: a frozen feature extractor (no gradients, always in eval mode: no dropout).
  trainable_layers  N (with freeze false): fine-tune only the top N transformer layers; the
             embeddings and the layers below stay frozen (0 = every parameter frozen, but dropout
             stays active in training).

Weights are read only from safetensors files, or from ``pytorch_model.bin`` with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from emoflow.assets import FAMILY_TOKENIZER  # family name -> asset with that family's vocabulary

FAMILIES = ("bert", "mpnet", "roberta", "distilbert", "electra", "deberta-v2", "xlm-roberta")


class EncoderLoadError(RuntimeError):
    """An encoder could not be loaded; the message names the source and what to do."""


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_asset(source: str) -> bool:
    from emoflow.assets import ASSETS

    return source in ASSETS


def resolve_source(source: str) -> Path | str:
    """A local folder for assets, folders and store mirrors; a hub id is returned unchanged."""
    if not isinstance(source, str) or not source:
        raise EncoderLoadError(f"encoder source must be a non-empty string, got {source!r}")
    if _is_asset(source):
        from emoflow.assets import asset_path

        return asset_path(source)
    if source.startswith(("s3://", "file://")):
        return download_mirror(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith(("/", "./", "../", "~")) or path.exists():
        raise EncoderLoadError(f"encoder source {source!r} is not a folder")
    return source  # hub id


def download_mirror(uri: str) -> Path:
    """Copy a mirrored model folder from a store into $EMOFLOW_HOME/cache/hf/<hash> (once)."""
    from emoflow.config import config_hash, home
    from emoflow.storage import StoreKeyError, fetch_prefix_once

    target = home() / "cache" / "hf" / config_hash(uri.rstrip("/"))
    try:
        return fetch_prefix_once(uri.rstrip("/"), target)
    except StoreKeyError:
        raise EncoderLoadError(f"no files under {uri!r}; mirror a model there first (`emoflow mirror <hub-id> {uri}`)") from None


def _hub_error(source: str, exc: Exception) -> EncoderLoadError:
    hint = (
        "the hub is offline here (HF_HUB_OFFLINE=1); pass a local folder, an offline asset "
        "('minilm', 'mpnet') or an s3:// mirror made with `emoflow mirror`"
        if _hub_offline()
        else "check the hub id, or pass a local folder / s3:// mirror"
    )
    return EncoderLoadError(f"cannot load {source!r}: {hint} ({type(exc).__name__}: {exc})")


def _load_config(source: str, resolved: Path | str, family: str | None):
    from transformers import AutoConfig

    if source in FAMILIES and not isinstance(resolved, Path):
        return AutoConfig.for_model(source)
    if isinstance(resolved, Path) and not (resolved / "config.json").exists():
        raise EncoderLoadError(f"encoder source {source!r}: no config.json in {resolved}")
    try:
        return AutoConfig.from_pretrained(str(resolved))
    except (OSError, ValueError) as exc:
        if family:
            return AutoConfig.for_model(family)
        raise _hub_error(source, exc) from exc


# derived config fields that must be recomputed from their sources, never passed back in
_DERIVED = ("num_feat_extract_layers", "transformers_version", "architectures", "_name_or_path")


def make_config(base, overrides: dict | None = None):
    """A transformers config from a config object or dict plus overrides (derived fields recomputed)."""
    from transformers import AutoConfig

    d = copy.deepcopy(base if isinstance(base, dict) else base.to_dict())
    d.update(overrides or {})
    model_type = d.pop("model_type", None)
    if not model_type:
        raise EncoderLoadError(f"config has no model_type: {sorted(d)[:10]}...")
    for k in _DERIVED:
        d.pop(k, None)
    return AutoConfig.for_model(model_type, **d)


def load_weights_into(model: torch.nn.Module, folder: Path) -> None:
    """Load safetensors (or weights_only torch) weights from a folder into a built model."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state = {}
        for f in files:
            state.update(load_file(str(f)))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise EncoderLoadError(f"no model.safetensors or pytorch_model.bin in {folder}")
    prefix = getattr(model, "base_model_prefix", "")
    own = model.state_dict()
    mapped = {}
    for key, value in state.items():
        k = key[len(prefix) + 1 :] if prefix and key.startswith(prefix + ".") else key
        if k in own:
            mapped[k] = value
    missing = [k for k in own if k not in mapped]
    if len(mapped) == 0:
        raise EncoderLoadError(f"no weights in {folder} match {type(model).__name__}")
    model.load_state_dict(mapped, strict=False)
    if missing:
        import warnings

        warnings.warn(f"{folder}: {len(missing)} weights not in checkpoint, left at init: {missing[:5]}")


def build_hf_model(spec: dict, auto_cls=None):
    """Shared by text and speech loaders: returns the transformers model for a spec."""
    from transformers import AutoConfig, AutoModel

    auto_cls = auto_cls or AutoModel
    spec = dict(spec)
    source = spec.get("source")
    init = spec.get("init", "pretrained")
    if init not in ("pretrained", "random"):
        raise EncoderLoadError(f"init must be 'pretrained' or 'random', got {init!r}")
    overrides = dict(spec.get("config") or {})
    if init == "random":
        if spec.get("config_dict"):
            config = make_config(spec["config_dict"], overrides)
        else:
            if source is None:
                raise EncoderLoadError("encoder spec needs a 'source'")
            resolved = resolve_source(source) if source not in FAMILIES else source
            config = make_config(_load_config(source, resolved, spec.get("family")), overrides)
        return auto_cls.from_config(config)
    if source is None or (source in FAMILIES and not _is_asset(source)):
        raise EncoderLoadError(f"init 'pretrained' needs a real source (asset, folder, s3:// or hub id), got {source!r}")
    resolved = resolve_source(source)
    if isinstance(resolved, Path):
        if not (resolved / "config.json").exists():
            raise EncoderLoadError(f"encoder source {source!r}: no config.json in {resolved}")
        if any(resolved.glob("*.safetensors")):
            return auto_cls.from_pretrained(str(resolved), use_safetensors=True)
        config = AutoConfig.from_pretrained(str(resolved))
        model = auto_cls.from_config(config)
        load_weights_into(model, resolved)
        return model
    try:
        return auto_cls.from_pretrained(resolved, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from exc


def load_tokenizer(source: str):
    """AutoTokenizer from an asset name, folder, s3:// mirror or hub id."""
    from transformers import AutoTokenizer

    if source in FAMILY_TOKENIZER:
        source = FAMILY_TOKENIZER[source]
    resolved = resolve_source(source)
    try:
        return AutoTokenizer.from_pretrained(str(resolved))
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from exc


def load_text_encoder(spec: dict[str, Any]):
    """Return (tokenizer, transformers model) for a text encoder spec (see module docstring)."""
    if not isinstance(spec, dict):
        raise EncoderLoadError(f"text encoder spec must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - {"source", "init", "config", "config_dict", "family", "tokenizer", "pool", "freeze",
                           "trainable_layers"}
    if unknown:
        raise EncoderLoadError(f"unknown text encoder spec keys: {sorted(unknown)}")
    model = build_hf_model(spec)
    if spec.get("freeze"):  # a frozen feature extractor: no gradients, dropout off
        model.requires_grad_(False)
        model.eval()
        model.train = lambda mode=True: model  # stays in eval mode when the outer model trains
    elif spec.get("trainable_layers") is not None:
        train_top_layers(model, int(spec["trainable_layers"]))
    tok_source = spec.get("tokenizer", None)
    if tok_source is False:
        tokenizer = None
    else:
        tokenizer = load_tokenizer(tok_source or spec["source"])
        vocab = getattr(model.config, "vocab_size", None)
        if vocab is not None and len(tokenizer) > vocab:
            raise EncoderLoadError(
                f"tokenizer {tok_source or spec['source']!r} has {len(tokenizer)} tokens but the encoder "
                f"vocabulary is {vocab}"
            )
    return tokenizer, model


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer layers of a transformers encoder (BERT/RoBERTa/MPNet/ELECTRA:
    ``encoder.layer``; DistilBERT: ``transformer.layer``)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise EncoderLoadError(f"{type(model).__name__}: no transformer layer stack found (encoder.layer)")


def train_top_layers(model: torch.nn.Module, n: int) -> None:
    """Freeze every parameter, then make the top ``n`` transformer layers trainable again."""
    layers = transformer_layers(model)
    if not 0 <= n <= len(layers):
        raise EncoderLoadError(f"trainable_layers={n}: the encoder has {len(layers)} layers")
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - n:]:
        layer.requires_grad_(True)


# ---------------------------------------------------------------- mirroring a hub model to a store
def mirror(hub_id: str, s3_uri: str) -> list[str]:
    """Download a hub model (snapshot_download) and upload its files under s3_uri.

    Only meaningful where a hub is reachable; returns the uploaded keys.
    """
    from huggingface_hub import snapshot_download

    from emoflow.storage import open_store

    if _hub_offline():
        raise EncoderLoadError(f"cannot mirror {hub_id!r}: HF_HUB_OFFLINE is set; run this where the hub is reachable")
    # *.pt / *.yaml: speaker checkpoints (WeSpeaker's avg_model.pt + config.yaml, emoflow.models.speaker_checkpoint)
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.pt", "*.yaml"]
    folder = Path(snapshot_download(hub_id, allow_patterns=patterns))
    store = open_store(s3_uri.rstrip("/"))
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = path.relative_to(folder).as_posix()
            store.put_file(key, path)
            keys.append(key)
    if not keys:
        raise EncoderLoadError(f"snapshot of {hub_id!r} held no files")
    return keys


def _cmd_mirror(args) -> int:
    keys = mirror(args.hub_id, args.uri)
    for k in keys:
        print(k)
    print(f"mirrored {args.hub_id} -> {args.uri} ({len(keys)} files)")
    return 0


def add_cli(subparsers) -> None:
    """Add `emoflow mirror <hub-id> <s3-uri>` to an argparse subparsers object (handler in `func`)."""
    p = subparsers.add_parser("mirror", help="copy a hub model folder to a store (s3:// or file://) for offline loading")
    p.add_argument("hub_id")
    p.add_argument("uri")
    p.set_defaults(func=_cmd_mirror)
