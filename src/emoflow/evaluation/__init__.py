"""emoflow.evaluation: folds, metrics, reports and KFP metric artifacts."""

from emoflow.evaluation.folds import Fold, FoldError, final_fit_split, make_folds, speaker_groups
from emoflow.evaluation.kfp_outputs import log_kfp_metrics
from emoflow.evaluation.metrics import GLOSSARY, SCALAR_METRICS, aggregate, compute_metrics
from emoflow.evaluation.report import PAPER_FIGURES, PROTOCOLS, rank, select_winner, write_report

__all__ = [
    "Fold", "FoldError", "final_fit_split", "make_folds", "speaker_groups",
    "log_kfp_metrics",
    "GLOSSARY", "SCALAR_METRICS", "aggregate", "compute_metrics",
    "PAPER_FIGURES", "PROTOCOLS", "rank", "select_winner", "write_report",
]
