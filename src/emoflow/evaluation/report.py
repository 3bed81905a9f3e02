"""Evaluation report: metrics JSON, confusion-matrix PNGs, Markdown + HTML comparison.

``results_by_arch`` maps a result name (usually the architecture, e.g. "a2") to the output of
``emoflow.evaluation.metrics.aggregate`` — optionally with extra keys ``"arch"`` (which paper the
result belongs to, default: the name's leading token) and ``"protocol"`` (default: the
``protocol`` argument). Results of different protocols (strict vs speaker-normalised) are reported
in separate sections and never ranked against each other.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from emoflow.evaluation.folds import describe_validation
from emoflow.evaluation.metrics import GLOSSARY, MULTILABEL_METRICS, SCALAR_METRICS
# figures as the papers report them: each architecture folder's paper.yaml (live over discovery)
from emoflow.models.registry import PAPER_FIGURES

PROTOCOLS = {
    "strict": "strict — no statistics of test speakers are used anywhere (features, "
              "normalisation, model selection).",
    "speaker-normalised": "speaker-normalised — features are z-normalised per speaker with that "
                          "speaker's unlabelled utterances, test speakers included.",
}
_PROTOCOL_ALIASES = {
    "strict": "strict",
    "speaker-normalised": "speaker-normalised", "speaker_normalised": "speaker-normalised",
    "speaker-normalized": "speaker-normalised", "speaker_normalized": "speaker-normalised",
    "spknorm": "speaker-normalised",
}
AGGREGATES = ("mean", "pooled")
_NAMES = {"ua": "UA", "wa": "WA", "wf1": "WF1", "mf1": "MF1",
          "ml_wa": "Eq. 6 WA", "ml_accuracy": "Eq. 4 accuracy", "ml_f1": "Eq. 5 F1"}


def normalise_protocol(protocol: str) -> str:
    """Canonical protocol name ("strict" or "speaker-normalised"); error on anything else."""
    key = _PROTOCOL_ALIASES.get(str(protocol).lower())
    if key is None:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
    return key


def paper_key(name: str, entry: dict | None = None) -> str | None:
    """Which PAPER_FIGURES entry a result belongs to ("a2-tiny" → "a2"), or None."""
    arch = str((entry or {}).get("arch") or name).lower()
    if arch in PAPER_FIGURES:
        return arch
    head = re.split(r"[^a-z0-9]", arch, maxsplit=1)[0]
    return head if head in PAPER_FIGURES else None


def _value(entry: dict, name: str, metric: str, aggregate: str) -> tuple[float, float]:
    """(value, std) of one metric of one result; std is 0 for pooled."""
    try:
        if aggregate == "mean":
            v, s = entry["mean"][metric], entry["std"][metric]
        else:
            v, s = entry["pooled"][metric], 0.0
    except (KeyError, TypeError) as exc:
        raise ValueError(f"result {name!r} has no {aggregate} {metric!r} (expected the output of "
                         f"metrics.aggregate)") from exc
    if v is None or math.isnan(float(v)):
        raise ValueError(f"result {name!r}: {aggregate} {metric} is not a number ({v!r})")
    return float(v), float(s)


def rank(results_by_arch: dict, metric: str = "ua", aggregate: str = "mean") -> list[dict]:
    """Results ordered best first: higher value, then lower std across folds, then name.

    Returns [{"name", "value", "std"}, ...].
    """
    if metric not in SCALAR_METRICS + MULTILABEL_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {SCALAR_METRICS + MULTILABEL_METRICS}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
    if not results_by_arch:
        raise ValueError("no results to rank")
    rows = []
    for name, entry in results_by_arch.items():
        v, s = _value(entry, name, metric, aggregate)
        rows.append({"name": str(name), "value": v, "std": s})
    # round away float noise so equal scores tie, then break ties deterministically
    rows.sort(key=lambda r: (-round(r["value"], 12), round(r["std"], 12), r["name"]))
    return rows


def select_winner(results_by_arch: dict, metric: str = "ua", aggregate: str = "mean",
                  protocol: str | None = None) -> str:
    """Name of the best result by ``metric`` ("ua", "wa", "wf1", "mf1") and ``aggregate``
    ("mean" across folds, or "pooled"). Ties: lower fold std, then alphabetical name.

    Results under different protocols are not compared: pass ``protocol`` to pick among one
    protocol's results; without it, mixed protocols are an error.
    """
    pool = results_by_arch
    protocols = {normalise_protocol(e.get("protocol", "strict")) for e in results_by_arch.values()}
    if protocol is not None:
        protocol = normalise_protocol(protocol)
        pool = {n: e for n, e in results_by_arch.items()
                if normalise_protocol(e.get("protocol", "strict")) == protocol}
        if not pool:
            raise ValueError(f"no results under protocol {protocol!r}")
    elif len(protocols) > 1:
        raise ValueError(f"results mix protocols {sorted(protocols)}; pass protocol= to choose "
                         f"among one of them")
    return rank(pool, metric, aggregate)[0]["name"]


# ----------------------------------------------------------------------------- formatting


def _pct(x) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}"


def _ms(entry: dict, m: str) -> str:
    return f"{_pct(entry['mean'][m])} ± {_pct(entry['std'][m])}"


def _paper_cell(name: str, entry: dict) -> str:
    key = paper_key(name, entry)
    if key is None:
        return "–"
    info = PAPER_FIGURES[key]
    if not info["figures"]:
        return f"{info['note']} ({info['corpus']})"
    figs = " / ".join(f"{_NAMES[m]} {v:.2f}" for m, v in info["figures"].items())
    return f"{figs} ({info['corpus']}, {info['protocol']})"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "result"


class _Doc:
    """Writes the same content as Markdown and as HTML."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str):
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str):
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]):
        self.md.append("\n".join(f"- {t}" for t in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>")

    def table(self, headers: list[str], rows: list[list[str]]):
        esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
                 "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        self.md.append("\n".join(lines) + "\n")
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, alt: str, src: str):
        self.md.append(f"![{alt}]({src})\n")
        self.html.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(alt)}"></p>')


# ----------------------------------------------------------------------------- confusion PNG


def plot_confusion(metrics: dict, path: str | Path, title: str = "") -> Path:
    """Two panels: counts (annotated) and row-normalised (annotated), rows = true emotion."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = metrics["labels"]
    cm = np.asarray(metrics["confusion"], dtype=float)
    norm = np.asarray(metrics["confusion_norm"], dtype=float)
    n = len(labels)
    size = max(4.0, 0.6 * n + 2.5)
    fig = Figure(figsize=(2 * size + 1, size + 0.6))
    FigureCanvasAgg(fig)
    for k, (mat, sub, fmt) in enumerate([(cm, "counts", "{:.0f}"), (norm, "row-normalised", "{:.2f}")]):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=1 if k else max(1.0, mat.max()))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(n), labels=labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
        top = mat.max() if mat.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if top and mat[i, j] > 0.6 * top else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------- report


def _multilabel_section(doc: _Doc, name: str, entry: dict) -> None:
    """A multi-label result: the means over emotions of Eq. 4-6 (fold mean ± std, pooled), and
    per emotion, pooled over folds."""
    doc.heading(4, f"{name}: multi-label, one binary task per emotion (percent; Makhmudov et al. 2024 Eq. 4-6)")
    doc.table(["Mean over emotions", "fold mean ± std", "pooled"],
              [[_NAMES[m], _ms(entry, m), _pct(entry["pooled"][m])] for m in MULTILABEL_METRICS])
    ml = entry["pooled"]["multilabel"]
    doc.table(["Emotion", "WA (Eq. 6)", "Accuracy (Eq. 4)", "F1 (Eq. 5)", "Present"],
              [[lab, _pct(m["wa"]), _pct(m["accuracy"]), _pct(m["f1"]), str(m["support"])]
               for lab, m in ml["per_label"].items()]
              + [["mean", _pct(ml["mean"]["wa"]), _pct(ml["mean"]["accuracy"]), _pct(ml["mean"]["f1"]),
                  str(ml["n"]) + " items"]])
    doc.para("Predicted present: per-emotion probability (sigmoid) above 0.5. The single-label figures "
             "above score the dominant emotion against the most probable one.")



def write_report(
    results_by_arch: dict,
    out_dir: str | Path,
    *,
    corpus: str,
    protocol: str = "strict",
    winner: str | None = None,
    metric: str = "ua",
    aggregate: str = "mean",
    title: str | None = None,
    validation: dict | None = None,
) -> dict[str, Path]:
    """Write metrics.json, confusion_<name>.png per result, report.md and report.html.

    ``validation`` ({"mode", "share"}, from the training summary) says how each fold's validation
    part was carved from its training groups (``emoflow.evaluation.folds.VAL_MODES``).

    Each protocol gets its own section with its own winner (``winner`` overrides the winner of
    the section it belongs to; otherwise ``select_winner(metric, aggregate)``). Returns paths:
    {"metrics_json", "report_md", "report_html", "confusion_png:<name>" for each result}.
    """
    if not results_by_arch:
        raise ValueError("no results to report")
    default_protocol = normalise_protocol(protocol)
    if winner is not None and winner not in results_by_arch:
        raise ValueError(f"winner {winner!r} is not among the results {sorted(results_by_arch)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sections: dict[str, dict] = {}
    for name, entry in results_by_arch.items():
        for key in ("folds", "mean", "std", "pooled", "labels"):
            if key not in entry:
                raise ValueError(f"result {name!r} has no {key!r} (expected metrics.aggregate output)")
        proto = normalise_protocol(entry.get("protocol", default_protocol))
        sections.setdefault(proto, {})[str(name)] = entry
    order = [p for p in PROTOCOLS if p in sections]

    paths: dict[str, Path] = {}
    used: set[str] = set()
    png_of: dict[str, str] = {}
    for proto in order:
        for name, entry in sections[proto].items():
            fname = f"confusion_{_safe(name)}.png"
            k = 2
            while fname in used:
                fname, k = f"confusion_{_safe(name)}_{k}.png", k + 1
            used.add(fname)
            plot_confusion(entry["pooled"], out / fname,
                           f"{name} — {corpus}, pooled over {entry['n_folds']} folds ({proto})")
            png_of[name] = fname
            paths[f"confusion_png:{name}"] = out / fname

    winners: dict[str, dict] = {}
    for proto in order:
        res = sections[proto]
        ranking = rank(res, metric, aggregate)
        win = winner if winner in res else ranking[0]["name"]
        winners[proto] = {"name": win, "metric": metric, "aggregate": aggregate,
                          "value": _value(res[win], win, metric, aggregate)[0],
                          "chosen_by": "given" if winner in res else "select_winner",
                          "ranking": ranking}

    doc = _Doc()
    agg_word = "mean across folds" if aggregate == "mean" else "pooled over folds"
    doc.heading(1, title or f"Emotion recognition evaluation — {corpus}")
    doc.para(f"Corpus: {corpus}. Protocols in this report: {', '.join(order)}. "
             f"Results of different protocols are reported in separate sections and never mixed "
             f"or ranked together. Winner metric: {_NAMES[metric]} ({agg_word}).")
    if validation:
        doc.para("Validation: " + describe_validation(validation["mode"], validation.get("share")) + ".")
    for proto in order:
        res = sections[proto]
        w = winners[proto]
        doc.heading(2, f"Protocol: {proto}")
        doc.para(PROTOCOLS[proto])
        doc.para(f"Winner ({proto}): {w['name']} — {_NAMES[metric]} {agg_word} "
                 f"{_pct(w['value'])} %.")
        doc.heading(3, "Comparison (percent)")
        headers = ["Architecture", "Folds", "UA mean ± std", "WA mean ± std", "WF1 mean ± std",
                   "MF1 mean ± std", "UA pooled", "WA pooled", "WF1 pooled", "MF1 pooled",
                   "Paper figures"]
        rows = []
        for r in w["ranking"]:
            e = res[r["name"]]
            rows.append([r["name"] + (" (winner)" if r["name"] == w["name"] else ""),
                         str(e["n_folds"])] + [_ms(e, m) for m in SCALAR_METRICS]
                        + [_pct(e["pooled"][m]) for m in SCALAR_METRICS] + [_paper_cell(r["name"], e)])
        doc.table(headers, rows)
        doc.para("Paper figures are the papers' own numbers on their corpus and protocol; they are "
                 f"directly comparable only when that corpus and protocol are the ones here ({corpus}).")
        for r in w["ranking"]:
            name, e = r["name"], res[r["name"]]
            doc.heading(3, f"{name}: per fold (percent)")
            doc.table(["Fold", "n", "UA", "WA", "WF1", "MF1"],
                      [[f, str(fm["n"])] + [_pct(fm[m]) for m in SCALAR_METRICS]
                       for f, fm in e["folds"].items()]
                      + [["mean ± std", str(sum(fm["n"] for fm in e["folds"].values()))]
                         + [_ms(e, m) for m in SCALAR_METRICS],
                         ["pooled", str(e["pooled"]["n"])]
                         + [_pct(e["pooled"][m]) for m in SCALAR_METRICS]])
            doc.heading(4, f"{name}: per class, pooled (percent)")
            doc.table(["Emotion", "Precision", "Recall", "F1", "Support"],
                      [[lab, _pct(pc["precision"]), _pct(pc["recall"]), _pct(pc["f1"]),
                        str(pc["support"])] for lab, pc in e["pooled"]["per_class"].items()])
            if "multilabel" in e["pooled"]:
                _multilabel_section(doc, name, e)
            doc.image(f"confusion matrix {name}", png_of[name])
    doc.heading(2, "Paper figures")
    doc.table(["Arch", "Paper", "Corpus", "Protocol", "UA", "WA", "Note"],
              [[k, v["paper"], v["corpus"], v["protocol"],
                f"{v['figures']['ua']:.2f}" if "ua" in v["figures"] else "n/a",
                f"{v['figures']['wa']:.2f}" if "wa" in v["figures"] else "n/a", v["note"] or "–"]
               for k, v in PAPER_FIGURES.items()])
    doc.heading(2, "Metric glossary")
    doc.bullets([GLOSSARY[k] if k in SCALAR_METRICS else f"{k}: {GLOSSARY[k]}" for k in GLOSSARY]
                + ["All figures in this report are percentages."])

    md_path, html_path, json_path = out / "report.md", out / "report.html", out / "metrics.json"
    md_path.write_text("\n".join(doc.md), encoding="utf-8")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "th{background:#eee}img{max-width:100%}")
    html_path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title or 'emoflow evaluation — ' + corpus)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n",
        encoding="utf-8")
    payload = {
        "corpus": corpus,
        "selection": {"metric": metric, "aggregate": aggregate},
        "validation": validation,
        "protocols": {
            p: {"description": PROTOCOLS[p], "winner": winners[p],
                "results": {n: {**e, "protocol": p, "confusion_png": png_of[n]}
                            for n, e in sections[p].items()}}
            for p in order
        },
        "paper_figures": dict(PAPER_FIGURES),
        "glossary": GLOSSARY,
    }
    json_path.write_text(json.dumps(payload, indent=1, sort_keys=False), encoding="utf-8")
    paths.update(metrics_json=json_path, report_md=md_path, report_html=html_path)
    return paths
