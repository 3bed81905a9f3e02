"""Multi-label training helpers (CMU-MOSEI under Makhmudov et al. 2024): the task a model was
trained for, the BCE positive weights from the training part, and the validation score that selects
the epoch (the mean over emotions of Eq. 6). Targets and presence sets: ``emoflow.training.data``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from emoflow.training.data import SINGLE_LABEL, presence_sets


def model_task(model: torch.nn.Module) -> str:
    """The task a model was trained for (its preset's ``train.task``; single_label by default)."""
    return ((getattr(model, "preset", None) or {}).get("train") or {}).get("task", SINGLE_LABEL)


def presence_pos_weight(targets: np.ndarray, how: Any) -> torch.Tensor | None:
    """BCE positive weight per emotion from the TRAINING multi-hot targets [N, C]: ``balanced`` is
    N_c / P_c (negatives over positives; an emotion never present gets 1); a list is taken as given."""
    if how is None or how is False or how == "none":
        return None
    n_classes = targets.shape[1]
    if isinstance(how, (list, tuple)):
        if len(how) != n_classes:
            raise ValueError(f"pos_weight lists {len(how)} weights for {n_classes} emotions")
        return torch.tensor([float(w) for w in how], dtype=torch.float32)
    if how != "balanced":
        raise ValueError(f"unknown pos_weight {how!r} (balanced, or a list)")
    pos = targets.sum(0)
    w = np.where(pos > 0, (len(targets) - pos) / np.maximum(pos, 1), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def mean_presence_wa(targets: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> float:
    """Mean over emotions of Eq. 6 (``emoflow.evaluation.metrics.multilabel_metrics``) for multi-hot
    truth and per-emotion probabilities; 0 when no emotion has both present and absent items."""
    from emoflow.evaluation.metrics import multilabel_metrics

    labels = list(labels)
    score = multilabel_metrics(presence_sets(targets, labels), presence_sets(probs, labels), labels)["mean"]["wa"]
    return 0.0 if score is None else float(score)
