"""Figures the notebooks share: training curves and the test images a model gets wrong.

Each function returns a matplotlib Figure (made with `plt.subplots`, so a notebook shows it);
nothing calls `plt.show()`. Imported on demand (`from shendu import plot`): matplotlib is slow to
import and the command line does not need it.
"""
import math

import matplotlib.pyplot as plt
import numpy as np

from .datasets import MNIST_CLASSES
from .train import predict_proba

__all__ = ["training_curves", "misclassified"]


def training_curves(history):
    """Two panels from a Trainer history: the training loss, and train and test accuracy (%)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for key, label in (("train_acc", "train"), ("test_acc", "test")):
        ax_acc.plot(epochs, [100 * h[key] for h in history], "o-", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.grid(alpha=0.3)
    return fig


def misclassified(model, x, t, n=20, classes=None):
    """The first `n` images the model gets wrong, five to a row, each titled "label → prediction".
    Returns `(figure, indices)`: the indices into x of the images shown."""
    x, t = np.asarray(x), np.asarray(t)
    classes = MNIST_CLASSES if classes is None else classes
    predicted = predict_proba(model, x).argmax(axis=1)
    wrong = np.flatnonzero(predicted != t)
    shown = wrong[:n]
    cols = 5
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ax.imshow(x[i, 0] if x.shape[1] == 1 else np.moveaxis(x[i], 0, -1), cmap="gray")
        ax.set_title(f"{classes[t[i]]} → {classes[predicted[i]]}", fontsize=10)
    fig.suptitle(f"{len(wrong)} of {len(x)} images misclassified"
                 + (f" (first {len(shown)} shown)" if len(shown) < len(wrong) else ""))
    return fig, shown
