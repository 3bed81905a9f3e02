"""IEMOCAP (Interactive Emotional Dyadic Motion Capture), full release.

Expected layout (the corpus root is ``IEMOCAP_full_release`` or a folder holding it)::

    <root>/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt
        "[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]"
    <root>/Session1/dialog/transcriptions/Ses01F_impro01.txt
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
    <root>/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    ... Session2 .. Session5

Only the ``[start - end]`` lines of the top-level EmoEvaluation ``*.txt`` files are read
(evaluator lines, the Categorical/Attribute/Self-evaluation sub-folders and ``._*`` files
are not). Standard 4-class protocol: neu -> neutral, hap + exc -> happy, sad -> sad,
ang -> angry (5531 utterances on the full release); every other label (fru, sur, fea, dis,
oth, xxx) is excluded by protocol and counted per label in the summary. Options:
``merge_excited`` (default True; False drops exc as excluded) and ``label_map`` (a full
raw -> label map replacing the standard one; raw labels it leaves out are excluded).

``session`` (the LOSO group) is ``Ses0N``; ``speaker`` is session + the gender of the
utterance's speaker (last id part: ``Ses01F_impro01_M003`` -> ``Ses01M``). ``extra.mode``
is ``impro`` or ``script``; scripted dialogues repeat the same text across sessions, which
the summary reports under ``notes.scripted_text_repeats`` (text leaks across LOSO folds).
Transcripts are the reference text; a labelled utterance without one is quarantined.
"""

from __future__ import annotations

import re
from collections import defaultdict

from emoflow.corpora.base import Adapter, ItemError, Scan, Source, decode_text, is_hidden
from emoflow.corpora.record import Utterance

STANDARD_MAP = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
RAW_LABELS = {"neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx"}
EVAL_LINE = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses0[1-5][FM]_\S+_[FM]\w*)\s+(\S+)\s+\[([^\]]*)\]\s*$"
)
TRANS_LINE = re.compile(r"^(Ses\S+)\s+\[[^\]]*\]:\s?(.*)$")
UTT_ID = re.compile(r"^(Ses0([1-5])[FM]_(impro|script)\w*?)_([FM])\w*$")


class IemocapAdapter(Adapter):
    name = "iemocap"
    labels = ("neutral", "happy", "sad", "angry")
    option_defaults = {"merge_excited": True, "label_map": None}
    layout = (
        "  Session{1..5}/dialog/EmoEvaluation/<dialog>.txt\n"
        "  Session{1..5}/dialog/transcriptions/<dialog>.txt\n"
        "  Session{1..5}/sentences/wav/<dialog>/<utterance>.wav"
    )

    def scan(self, src: Source, options: dict) -> Scan:
        scan = Scan()
        root = "IEMOCAP_full_release/" if src.list("IEMOCAP_full_release/Session") else ""
        label_map = dict(options["label_map"] or STANDARD_MAP)
        if options["label_map"] is None and not options["merge_excited"]:
            label_map.pop("exc")
        scan.labels = tuple(sorted(set(label_map.values())))
        known_raw = RAW_LABELS | set(label_map)
        files = src.list(root)
        eval_files = [f for f in files if re.fullmatch(re.escape(root) + r"Session[1-5]/dialog/EmoEvaluation/[^/]+\.txt", f)]
        transcripts: dict[str, dict[str, str] | ItemError] = {}
        script_texts: dict[str, set[str]] = defaultdict(set)   # normalised text -> sessions
        script_utts: dict[str, list[str]] = defaultdict(list)
        hidden = 0
        for ef in eval_files:
            if is_hidden(ef):
                hidden += 1
                continue
            try:
                lines = decode_text(src.read_bytes(ef), ef).splitlines()
            except ItemError as exc:
                scan.reject(None, ef, exc.reason, f"whole EmoEvaluation file skipped: {exc.detail}")
                continue
            session_dir = ef[len(root):].split("/")[0]
            for lineno, line in enumerate(lines, 1):
                if not line.startswith("["):
                    continue
                where = f"{ef}:{lineno}"
                m = EVAL_LINE.match(line.strip())
                u = UTT_ID.match(m.group(3)) if m else None
                if not m or not u:
                    scan.reject(None, where, "bad_row", f"{where}: malformed evaluation line {line.strip()!r}")
                    continue
                start, end, uid, raw, vad = m.groups()
                dialog, sess_no, mode, gender = u.groups()
                if f"Session{sess_no}" != session_dir:
                    scan.reject(uid, where, "bad_row", f"{where}: {uid} listed under {session_dir}")
                    continue
                if raw not in known_raw:
                    scan.reject(uid, where, "unknown_label", f"{where}: label {raw!r} not an IEMOCAP label")
                    continue
                if raw not in label_map:
                    scan.exclude(uid, where, raw)
                    continue
                try:
                    vad_vals = [float(v) for v in vad.split(",")]
                    t0, t1 = float(start), float(end)
                except ValueError:
                    scan.reject(uid, where, "bad_row", f"{where}: bad number in {line.strip()!r}")
                    continue
                trans_file = f"{root}Session{sess_no}/dialog/transcriptions/{dialog}.txt"
                if trans_file not in transcripts:
                    transcripts[trans_file] = self._transcripts(src, trans_file)
                tx = transcripts[trans_file]
                if isinstance(tx, ItemError):
                    scan.reject(uid, trans_file, tx.reason, tx.detail)
                    continue
                text = tx.get(uid)
                if not text:
                    scan.reject(uid, trans_file, "missing_text", f"{uid}: no transcript line in {trans_file}")
                    continue
                session = f"Ses0{sess_no}"
                if mode == "script":
                    key = " ".join(text.lower().split())
                    script_texts[key].add(session)
                    script_utts[key].append(uid)
                scan.items.append(Utterance(
                    id=uid, audio=f"{root}Session{sess_no}/sentences/wav/{dialog}/{uid}.wav", text=text,
                    label=label_map[raw], speaker=f"{session}{gender}", session=session, corpus=self.name,
                    dialogue=dialog, text_source="reference",
                    extra={"mode": mode, "raw_label": raw, "vad": vad_vals, "gender": gender,
                           "dialog_start": t0, "dialog_end": t1},
                ))
        if hidden:
            scan.notes["ignored_hidden_files"] = hidden
        if not eval_files or (not scan.items and not scan.rejects and not scan.excluded):
            raise self.no_items_error(src)
        repeats = {k: v for k, v in script_texts.items() if len(v) > 1}
        scan.notes["modes"] = {
            "impro": sum(1 for u in scan.items if u.extra["mode"] == "impro"),
            "script": sum(1 for u in scan.items if u.extra["mode"] == "script"),
        }
        scan.notes["scripted_text_repeats"] = {
            "texts_in_several_sessions": len(repeats),
            "utterances": sum(len(script_utts[k]) for k in repeats),
            "examples": [{"text": k, "sessions": sorted(v)} for k, v in sorted(repeats.items())[:5]],
            "warning": "scripted text repeats across sessions: text-only models can memorise it across LOSO folds",
        }
        return scan

    @staticmethod
    def _transcripts(src: Source, rel: str) -> dict | ItemError:
        """utterance id -> text ({} when the file is absent; the ItemError when it is unreadable)."""
        if not src.exists(rel):
            return {}
        try:
            text = decode_text(src.read_bytes(rel), rel)
        except ItemError as exc:
            return exc
        out = {}
        for line in text.splitlines():
            m = TRANS_LINE.match(line.strip())
            if m:
                out[m.group(1)] = m.group(2).strip()
        return out
