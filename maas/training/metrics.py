"""Evaluation metrics on held-out data, as plain JSON-able dicts, each beside the baseline a model
must beat (the training split's majority class; for regression, its mean)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maas.templates import DataInfo, Template


def evaluate(template: Template, info: DataInfo, y_true: np.ndarray, outputs: np.ndarray,
             *, majority_class: int | None = None) -> dict[str, Any]:
    """The template's metrics for model ``outputs`` (probabilities, or predictions) on ``y_true``."""
    if template.task == "regression":
        baseline = info.stats.label_mean if info.stats and info.stats.label_mean is not None else float(np.mean(y_true))
        metrics = regression_metrics(y_true, outputs)
        constant = regression_metrics(y_true, np.full_like(y_true, baseline, dtype=np.float64))
        metrics["baseline"] = {"predict": "training mean", "value": baseline,
                               **{k: constant[k] for k in ("mse", "mae", "r2")}}
        return metrics
    metrics = classification_metrics(y_true, np.argmax(outputs, axis=-1), info.class_names)
    if majority_class is not None:
        constant = classification_metrics(y_true, np.full_like(y_true, majority_class), info.class_names)
        metrics["baseline"] = {"predict": "majority class", "class": info.class_names[majority_class],
                               **{k: constant[k] for k in ("accuracy", "f1_macro")}}
    return metrics


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class figures and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(macro_p),
        "recall_macro": float(macro_r),
        "f1_macro": float(macro_f1),
        "num_examples": len(y_true),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Mean squared error, mean absolute error and R² (1 - residual / total sum of squares)."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    residual = y_true - y_pred
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mse": float(np.mean(residual**2)),
        "mae": float(np.mean(np.abs(residual))),
        "r2": 1.0 - float(np.sum(residual**2)) / total if total > 0 else 0.0,
        "num_examples": len(y_true),
    }


def summarize_folds(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over cross-validation folds of every numeric top-level metric."""
    keys = [k for k, v in folds[0].items() if isinstance(v, (int, float)) and k != "num_examples"]
    return {k: {"mean": float(np.mean([f[k] for f in folds])), "std": float(np.std([f[k] for f in folds]))}
            for k in keys}


def headline(metrics: dict[str, Any]) -> str:
    """The one-line summary of a version's held-out metrics, beside its baseline when known."""
    baseline = metrics.get("baseline") or {}
    if "r2" in metrics:
        line = f"MSE {metrics['mse']:.4g}, MAE {metrics['mae']:.4g}, R² {metrics['r2']:.4f}"
        return line + (f" (baseline MAE {baseline['mae']:.4g})" if "mae" in baseline else "")
    if "accuracy" in metrics:
        line = f"accuracy {metrics['accuracy']:.4f}"
        line += f", macro F1 {metrics['f1_macro']:.4f}" if "f1_macro" in metrics else ""
        return line + (f" (majority-class baseline {baseline['accuracy']:.4f})" if "accuracy" in baseline else "")
    return ""
