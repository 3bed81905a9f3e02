"""Q2 on a GPU: fine-tune MiniLM-L6 on MELD text with a dialogue context window.

Two stages, so that only derived arrays and a small model travel to an accelerator machine:

    python benchmarks/q2_finetune.py prepare --out .q2carry      # here: ingest + tokenize + fp16 MiniLM copy
    python benchmarks/q2_finetune.py train --carry .q2carry      # on the GPU (or CPU, slowly)

Input per utterance (EmoBERTa-style context window): segment A = "<speaker>: <utterance>",
segment B = the previous ``--past`` utterances and the next ``--future`` one, each "<speaker>:
<text>" (truncated from the far end). Mean-pooled token states -> dropout -> linear; class-weighted
cross-entropy (inverse frequency ** 0.5); AdamW, linear warm-up/decay, bf16 autocast on CUDA.
``--past 0 --future 0`` is the no-context line. Model selection: epoch with the best weighted F1
on a 10 % share of training dialogues (dev untouched), and, reported separately, the best dev epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def prepare(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from emoflow.assets import asset_path
    from emoflow.corpora import ingest
    from emoflow.storage import open_store
    from emoflow.config import home

    src = asset_path("minilm")
    out = Path(args.out)
    (out / "model").mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / f).exists():
            (out / "model" / f).write_bytes((src / f).read_bytes())
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(out / "model" / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(src))
    utts = ingest("meld", args.data, open_store(str(home() / "bench-store")), copy_audio=False).utterances
    by_dia: dict = {}
    for i, u in enumerate(utts):
        by_dia.setdefault(u.dialogue, []).append(i)
    line = [f"{u.speaker or 'someone'}: {u.text}" for u in utts]
    arrays = {}
    for past, future in ((args.past, args.future), (0, 0)):
        a_texts, b_texts = [], []
        for dia in by_dia.values():
            for pos, i in enumerate(dia):
                ctx = [line[j] for j in dia[max(0, pos - past):pos]][::-1]  # nearest first
                nxt = [line[j] for j in dia[pos + 1:pos + 1 + future]]
                a_texts.append(line[i])
                b_texts.append(" | ".join(ctx) + (" [SEP] " + " | ".join(nxt) if nxt else ""))
        order = [i for dia in by_dia.values() for i in dia]
        if past or future:
            enc = tok(a_texts, b_texts, truncation="only_second", max_length=args.max_length, padding="max_length")
        else:
            enc = tok(a_texts, truncation=True, max_length=64, padding="max_length")
        tag = "ctx" if past or future else "noctx"
        arrays[f"{tag}_ids"] = np.array(enc["input_ids"], np.int32)
        arrays[f"{tag}_mask"] = np.array(enc["attention_mask"], np.int8)
        arrays[f"{tag}_types"] = np.array(enc["token_type_ids"], np.int8)
    arrays["label"] = np.array([LABELS.index(utts[i].label) for i in order], np.int8)
    arrays["split"] = np.array([utts[i].split for i in order])
    arrays["dialogue"] = np.array([utts[i].dialogue for i in order])
    np.savez_compressed(out / "meld_tokens.npz", **arrays)
    print(json.dumps({"utterances": len(order), "past": args.past, "future": args.future,
                      "max_length": args.max_length, "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}))


def train(args) -> None:
    import torch
    from sklearn.metrics import f1_score
    from torch import nn
    from transformers import AutoModel

    carry = Path(args.carry)
    z = np.load(carry / "meld_tokens.npz")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    labels = torch.from_numpy(z["label"].astype(np.int64))
    split, dialogue = z["split"], z["dialogue"]
    train_dias = sorted(set(dialogue[split == "train"]))
    rng = np.random.default_rng(123)
    val_set = set(rng.permutation(train_dias)[: len(train_dias) // 10])
    is_val = np.array([d in val_set for d in dialogue]) & (split == "train")
    tr_idx = np.nonzero((split == "train") & ~is_val)[0]
    va_idx, dv_idx = np.nonzero(is_val)[0], np.nonzero(split == "dev")[0]
    if args.limit:  # smoke runs
        tr_idx, va_idx, dv_idx = tr_idx[: args.limit], va_idx[: args.limit], dv_idx[: args.limit]
    counts = np.bincount(z["label"][tr_idx], minlength=len(LABELS))
    w = torch.tensor((counts.sum() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32)
    w = (w / w.mean()).to(dev)
    results = []
    for tag in args.variants:
        ids = torch.from_numpy(z[f"{tag}_ids"].astype(np.int64))
        mask = torch.from_numpy(z[f"{tag}_mask"].astype(np.int64))
        types = torch.from_numpy(z[f"{tag}_types"].astype(np.int64))
        dev_probs = {"val": [], "dev": []}
        for seed in args.seeds:
            t0 = time.time()
            torch.manual_seed(seed)
            enc = AutoModel.from_pretrained(str(carry / "model"), torch_dtype=torch.float32).to(dev)
            head = nn.Sequential(nn.Dropout(0.1), nn.Linear(enc.config.hidden_size, len(LABELS))).to(dev)
            params = [{"params": enc.parameters(), "lr": args.lr}, {"params": head.parameters(), "lr": args.head_lr}]
            opt = torch.optim.AdamW(params, weight_decay=0.01)
            steps = args.epochs * ((len(tr_idx) + args.batch_size - 1) // args.batch_size)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, (steps - s) / (0.9 * steps)))
            loss_fn = nn.CrossEntropyLoss(weight=w)

            def forward(b):
                m = mask[b].to(dev)
                keep = int(m.sum(1).max())
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    h = enc(input_ids=ids[b, :keep].to(dev), attention_mask=m[:, :keep],
                            token_type_ids=types[b, :keep].to(dev)).last_hidden_state
                mm = m[:, :keep].unsqueeze(-1).float()
                return head((h.float() * mm).sum(1) / mm.sum(1))

            def predict(idx):
                enc.eval(), head.eval()
                out = []
                with torch.no_grad():
                    for k in range(0, len(idx), 256):
                        out.append(torch.softmax(forward(idx[k:k + 256]), -1).float().cpu().numpy())
                enc.train(), head.train()
                return np.concatenate(out)

            best = {"val": (-1, None, 0), "dev": (-1, None, 0)}
            g = np.random.default_rng(seed)
            for epoch in range(args.epochs):
                perm = g.permutation(tr_idx)
                for k in range(0, len(perm), args.batch_size):
                    b = perm[k:k + args.batch_size]
                    loss = loss_fn(forward(b), labels[b].to(dev))
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
                    opt.step()
                    sched.step()
                pv, pd = predict(va_idx), predict(dv_idx)
                sv = f1_score(z["label"][va_idx], pv.argmax(1), average="weighted")
                sd = f1_score(z["label"][dv_idx], pd.argmax(1), average="weighted")
                if sv > best["val"][0]:
                    best["val"] = (sv, pd, epoch + 1)
                if sd > best["dev"][0]:
                    best["dev"] = (sd, pd, epoch + 1)
                print(json.dumps({"variant": tag, "seed": seed, "epoch": epoch + 1, "val_wf1": round(100 * sv, 2),
                                  "dev_wf1": round(100 * sd, 2), "s": round(time.time() - t0, 1)}), flush=True)
            for sel in ("val", "dev"):
                dev_probs[sel].append(best[sel][1])
        for sel in ("val", "dev"):
            ens = np.mean(dev_probs[sel], 0)
            per_seed = [f1_score(z["label"][dv_idx], p.argmax(1), average="weighted") * 100 for p in dev_probs[sel]]
            row = {"variant": tag, "selection": "val share of train" if sel == "val" else "dev (optimistic)",
                   "dev_wf1_seeds": [round(v, 2) for v in per_seed],
                   "dev_wf1_ensemble": round(100 * f1_score(z["label"][dv_idx], ens.argmax(1), average="weighted"), 2),
                   "device": str(torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu")}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "meld"))
    a.add_argument("--out", default=".q2carry")
    a.add_argument("--past", type=int, default=4)
    a.add_argument("--future", type=int, default=1)
    a.add_argument("--max-length", type=int, default=160)
    b = sub.add_parser("train")
    b.add_argument("--carry", default=".q2carry")
    b.add_argument("--variants", nargs="*", default=["ctx", "noctx"])
    b.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    b.add_argument("--epochs", type=int, default=6)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--lr", type=float, default=5e-5)
    b.add_argument("--head-lr", type=float, default=1e-3)
    b.add_argument("--results")
    b.add_argument("--limit", type=int, default=0, help="use only this many utterances per part (smoke test)")
    args = p.parse_args(argv)
    prepare(args) if args.cmd == "prepare" else train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
