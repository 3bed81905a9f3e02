"""emoflow.monitoring: Prometheus metrics and drift of the predictor, alert rules, retraining triggers.

- metrics.PredictionMetrics / default_metrics(): the predictor's metrics (see metrics.py docstring)
- drift: each drift statistic declared once (STATISTICS), evaluated in-process (DriftWindow, a
  10-minute time window) and rendered to PromQL for the recording rules
- rules: Prometheus recording rules + alerts (`python -m emoflow.monitoring.rules`)
- schedule.create_schedule: KFP recurring run; webhook: Alertmanager receiver starting retraining
- promotion.should_promote: candidate vs production policy; cli.add_cli: the CLI subcommands
"""

from emoflow.monitoring.cli import add_cli
from emoflow.monitoring.promotion import should_promote

__all__ = ["add_cli", "should_promote"]
