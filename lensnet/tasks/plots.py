"""PNG figures for runs and TensorBoard (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from lensnet.core.fileio import atomic_open  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def png_bytes(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> plt.Figure:
    """One ROC curve per (name, y_true bool, score)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, y, s in curves:
        if 0 < np.sum(y) < len(y):
            fpr, tpr, _ = skm.roc_curve(y, s)
            ax.plot(fpr, tpr, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(y: np.ndarray, s: np.ndarray, name: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    if 0 < np.sum(y) < len(y):
        precision, recall, _ = skm.precision_recall_curve(y, s)
        ax.plot(recall, precision, label=f"{name} (AP {skm.average_precision_score(y, s):.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return fig


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * len(class_names), 1.0 + 0.9 * len(class_names)))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return fig


def scatter_figure(y_true: np.ndarray, y_pred: np.ndarray, name: str) -> plt.Figure:
    mask = np.isfinite(y_true)
    t, p = y_true[mask], y_pred[mask]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.5, 4))
    ax.scatter(t, p, s=4, alpha=0.5)
    if t.size:
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set(xlabel=f"true {name}", ylabel=f"predicted {name}", title="Prediction vs truth")
    ax2.hist(p - t, bins=40)
    ax2.set(xlabel="predicted - true", ylabel="records", title="Residuals")
    return fig


def learning_curves_figure(history_csv: Path, monitor: str) -> plt.Figure | None:
    if not history_csv.is_file():
        return None
    with open(history_csv) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key in zip(axes, ("loss", monitor)):
        for prefix, style in (("", "-"), ("val_", "--")):
            if f"{prefix}{key}" in rows[0]:
                ax.plot(epochs, series(f"{prefix}{key}"), style, label=f"{prefix or 'train_'}{key}")
        ax.set(xlabel="epoch", title=key)
        ax.legend(fontsize=8)
    return fig


def samples_figure(images: np.ndarray, titles: Sequence[str]) -> plt.Figure:
    """A grid of images (N, H, W, C), first channel or RGB composite, with one title each."""
    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        if image.shape[-1] >= 3:
            rgb = image[..., :3][..., ::-1]  # g,r,i -> show i as red
            lo, hi = np.percentile(rgb, [1, 99.5])
            ax.imshow(np.clip((rgb - lo) / max(hi - lo, 1e-12), 0, 1), origin="lower")
        else:
            ax.imshow(image[..., 0], origin="lower", cmap="magma")
        ax.set_title(title, fontsize=7)
    return fig


def histogram_figure(values: dict[str, np.ndarray], xlabel: str, log_x: bool = True) -> plt.Figure:
    """One step histogram per named set of values (e.g. anomaly scores per class), on shared bins."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    finite = [np.asarray(v, dtype=np.float64)[np.isfinite(v)] for v in values.values()]
    pooled = np.concatenate(finite) if finite else np.zeros(0)
    if log_x:
        pooled = pooled[pooled > 0]
    if pooled.size:
        lo, hi = float(pooled.min()), float(pooled.max())
        hi = hi if hi > lo else lo + 1.0
        bins = np.geomspace(lo, hi, 41) if log_x else np.linspace(lo, hi, 41)
        for name, v in zip(values, finite):
            if v.size:
                ax.hist(v, bins=bins, histtype="step", label=f"{name} (n={v.size})")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="records per bin", title="Scores per class")
    ax.legend(fontsize=8)
    return fig


def residual_figure(images: np.ndarray, reconstructions: np.ndarray, titles: Sequence[str]) -> plt.Figure:
    """Columns of (input, reconstruction, residual = input - reconstruction), first channel, one title each."""
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    for j in range(n):
        image, recon = images[j][..., 0], reconstructions[j][..., 0]
        lo, hi = np.percentile(image, [1, 99.5])
        residual = image - recon
        span = float(np.max(np.abs(residual))) or 1.0
        axes[0, j].imshow(image, origin="lower", cmap="magma", vmin=lo, vmax=hi)
        axes[1, j].imshow(recon, origin="lower", cmap="magma", vmin=lo, vmax=hi)
        axes[2, j].imshow(residual, origin="lower", cmap="RdBu_r", vmin=-span, vmax=span)
        axes[0, j].set_title(titles[j], fontsize=7)
        axes[2, j].set_xlabel(f"|r| <= {span:.2g}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(("input", "reconstruction", "residual")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    return fig
