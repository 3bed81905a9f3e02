from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Output

from emoflow.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def evaluate(
    predictions: Input[Dataset],
    corpus: str,
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
) -> dict:
    """Fold metrics (mean ± std and pooled), confusion matrices and a report the Kubeflow UI shows."""
    import shutil

    from emoflow import steps

    summary = steps.evaluate(predictions.path, evaluation.path, metrics_artifact=metrics,
                             classification_artifact=confusion, corpus=corpus)
    shutil.copy(summary["report_files"]["report_html"], report.path)
    return {"arch": summary["arch"], "mean": summary["metrics"]["mean"], "pooled": summary["metrics"]["pooled"]}
