"""Figures and label-free checks of self-supervised runs: embedding PCA, k-NN accuracy, MAE reconstructions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lensnet.tasks import plots

RECONSTRUCTIONS = 6  # validation images shown


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """The first two principal components of (N, D) embeddings (numpy SVD: no new dependency)."""
    x = np.asarray(embeddings, np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))) if out.shape[1] < 2 else out


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy (cosine similarity, majority vote) of labelled embeddings."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(x) - 1)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = labels[nearest]
    predicted = np.array([np.bincount(v).argmax() for v in votes])
    return float(np.mean(predicted == labels))


def embedding_figure(embeddings: np.ndarray, labels: np.ndarray, class_names: Sequence[str]):
    """2-D PCA of the embeddings, one colour per class when labels exist."""
    import matplotlib.pyplot as plt

    xy = pca_2d(embeddings)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    if len(class_names) and np.all(labels >= 0):
        for c, name in enumerate(class_names):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, label=name)
        ax.legend(fontsize=8, markerscale=2)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="test embeddings (PCA)")
    return fig


def reconstruction_figure(original: np.ndarray, masked: np.ndarray, reconstructed: np.ndarray):
    """Three rows (original / masked / reconstruction) of the first channel, one column per image."""
    import matplotlib.pyplot as plt

    n = len(original)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)
    for row, (title, images) in enumerate((("original", original), ("masked", masked),
                                           ("reconstruction", reconstructed))):
        for col in range(n):
            ax = axes[row, col]
            lo, hi = np.percentile(original[col][..., 0], [1, 99.5])
            ax.imshow(images[col][..., 0], origin="lower", cmap="magma", vmin=lo, vmax=hi)
            ax.axis("off")
            if col == 0:
                ax.set_title(title, fontsize=8, loc="left")
    return fig


class ReconstructionImages(keras.callbacks.Callback):
    """MAE: at every epoch's end, reconstruct a few validation images with a fixed mask; writes
    plots/mae_reconstructions.png and a TensorBoard image (logs/reconstructions)."""

    def __init__(self, run_dir: Path, info: Any, config: dict, num_patches: int) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.info, self.config, self.num_patches = info, config, int(num_patches)
        self.images = None

    def _images(self) -> np.ndarray:
        from lensnet.data import load

        data = self.config["data"]
        split = data["val_split"]
        batch = next(iter(load(self.info, split, batch_size=RECONSTRUCTIONS, fields=("image",), shuffle=False,
                               normalise=data["normalise"])))
        return batch["image"].numpy()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        if self.images is None:
            self.images = self._images()
        noise = tf.random.stateless_uniform([len(self.images), self.num_patches], [0, 1])  # the same mask each epoch
        masked, reconstructed = self.model.reconstruct(self.images, noise)
        fig = reconstruction_figure(self.images, masked.numpy(), reconstructed.numpy())
        path = plots.save(fig, self.run_dir / "plots" / "mae_reconstructions.png")
        writer = tf.summary.create_file_writer(str(self.run_dir / "logs" / "reconstructions"))
        with writer.as_default():
            tf.summary.image("mae_reconstructions", tf.image.decode_png(path.read_bytes(), channels=4)[None],
                             step=epoch)
        writer.flush()


def knn_probabilities(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, num_classes: int,
                      k: int = 20, temperature: float = 0.07) -> np.ndarray:
    """Class probabilities of `test` embeddings from their k nearest `train` embeddings (cosine similarity),
    each neighbour's vote weighted by exp(similarity / temperature): DINO's weighted k-NN classifier."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sim = unit(test) @ unit(train).T
    k = min(int(k), len(train))
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sim, nearest, axis=1) / temperature)
    votes = np.zeros((len(test), num_classes))
    np.add.at(votes, (np.repeat(np.arange(len(test)), k), np.asarray(train_labels)[nearest].ravel()), weights.ravel())
    return votes / votes.sum(axis=1, keepdims=True)
