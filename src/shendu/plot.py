"""Figures the notebooks share: training curves, the test images a model gets wrong, and what
a trained network's layers hold (filters, feature maps).

Each function returns a matplotlib Figure (made with `plt.subplots`, so a notebook shows it);
nothing calls `plt.show()`. Imported on demand (`from shendu import plot`): matplotlib is slow to
import and the command line does not need it.
"""
import math

import matplotlib.pyplot as plt
import numpy as np

from .datasets import MNIST_CLASSES
from .train import predict_proba

__all__ = ["training_curves", "misclassified", "errors", "filters", "feature_maps",
           "block_diagram", "run_curves", "augmentations", "depth_and_data", "time_shares",
           "ladder", "scaling", "underflow", "scenes", "png", "pictures", "returns", "ilsvrc",
           "transfer", "accuracy_by_epoch"]


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
    """The first `n` images the model (or list of models: their ensemble) gets wrong, five to
    a row, each titled "label → prediction". Returns `(figure, indices)`: the indices into x of
    the images shown."""
    return errors(x, t, predict_proba(model, np.asarray(x)).argmax(axis=1), n, classes)


def errors(x, t, predicted, n=20, classes=None):
    """misclassified() for predictions made elsewhere (a results file's): the first `n` images
    whose predicted label differs from t."""
    x, t, predicted = np.asarray(x), np.asarray(t), np.asarray(predicted)
    classes = MNIST_CLASSES if classes is None else classes
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


def _grid(images, cols, titles=(), size=1.1, cmap="gray", symmetric=False):
    """Images in rows of `cols`, without axes; symmetric: a diverging colour map around 0."""
    rows = max(1, math.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, [*titles] + [None] * len(images)):
        limit = np.abs(image).max() or 1
        ax.imshow(image, cmap="RdBu_r" if symmetric else cmap,
                  **({"vmin": -limit, "vmax": limit} if symmetric else {}))
        if title:
            ax.set_title(title, fontsize=8)
    return fig


def filters(conv, cols=8):
    """A convolution's kernels, one image per output channel (input channel 0): red positive,
    blue negative weights."""
    weight = conv.weight.data
    fig = _grid(weight[:, 0], cols, [f"{o}" for o in range(len(weight))], symmetric=True)
    fig.suptitle(f"{len(weight)} filters of {weight.shape[2]}×{weight.shape[3]} pixels")
    return fig


def feature_maps(model, image, depths, channels=8):
    """The maps one image makes after the layers at `depths` of a Sequential model: a row of
    the first `channels` channels per depth, in eval mode."""
    from .train import inference
    x = np.asarray(image, np.float32).reshape(1, 1, *np.shape(image)[-2:])
    rows, titles = [], []
    with inference(model):
        for d, layer in enumerate(model):
            x = layer(x)
            if d in depths:
                rows += list(x[0, :channels])
                titles += [f"layer {d}, ch {c}" if c == 0 else f"ch {c}" for c in range(channels)]
    return _grid(rows, channels, titles, size=1.2, cmap="viridis")


def block_diagram(block, title=None):
    """A network block drawn from its modules: a Sequential as a column, a Concat's branches
    side by side, a Residual's body beside its shortcut, joined by ⊕."""
    from .nn import Concat, Residual, Sequential
    from matplotlib.patches import FancyBboxPatch

    def label(m):
        name = type(m).__name__
        if name in ("Conv2d", "ConvReLU2d"):
            return f"conv {m.kernel_size}×{m.kernel_size}, {m.out_channels}" + (
                f", /{m.stride}" if m.stride > 1 else "") + (" + ReLU" if name != "Conv2d" else "")
        if name in ("MaxPool2d", "AvgPool2d"):
            return f"{name[:3].lower()} pool {m.kernel_size}×{m.kernel_size}" + (
                f", /{m.stride}" if m.stride > 1 else "")
        return {"BatchNorm2d": "BN", "PadShortcut": "subsample, pad"}.get(name, name)

    def size(m):  # (width, height) in box units
        if isinstance(m, Sequential):
            parts = [size(c) for c in m]
            return max(w for w, _ in parts), sum(h for _, h in parts)
        if isinstance(m, Concat):
            parts = [size(c) for c in m]
            return sum(w for w, _ in parts), max(h for _, h in parts) + 1
        if isinstance(m, Residual):
            body = size(m.body)
            short = (1, 0) if m.shortcut is None else size(m.shortcut)
            return body[0] + short[0], max(body[1], short[1]) + 1
        return 1, 1

    def draw(m, x, y):  # top-centre at (x, y); returns the bottom y
        if isinstance(m, Sequential):
            for c in m:
                y = draw(c, x, y)
            return y
        if isinstance(m, (Concat, Residual)):
            parts = list(m) if isinstance(m, Concat) else [m.body, m.shortcut]
            widths = [size(p)[0] if p is not None else 1 for p in parts]
            left, bottom = x - sum(widths) / 2, y - size(m)[1] + 1
            for p, w in zip(parts, widths):
                cx = left + w / 2
                ax.annotate("", (cx, y - 0.05), (x, y + 0.25), arrowprops={"arrowstyle": "-"})
                end = y if p is None else draw(p, cx, y)
                ax.annotate("", (x, bottom - 0.15), (cx, end), arrowprops={"arrowstyle": "->"})
                left += w
            ax.text(x, bottom - 0.5, "concatenate" if isinstance(m, Concat) else "⊕",
                    ha="center", va="center", fontsize=9 if isinstance(m, Concat) else 14,
                    bbox={"boxstyle": "round", "fc": "#f3e6c4", "ec": "0.4"})
            return bottom - 1
        ax.annotate("", (x, y - 0.22), (x, y + 0.28), arrowprops={"arrowstyle": "->"})
        ax.add_patch(FancyBboxPatch((x - 0.44, y - 0.72), 0.88, 0.5, boxstyle="round,pad=0.02",
                                    fc="#dbe8f5", ec="0.4"))
        ax.text(x, y - 0.47, label(m), ha="center", va="center", fontsize=8)
        return y - 1

    width, height = size(block)
    fig, ax = plt.subplots(figsize=(1.9 * width + 0.5, 0.55 * height + 0.8), layout="constrained")
    ax.set(xlim=(-width / 2, width / 2), ylim=(-height - 0.2, 0.4))
    ax.axis("off")
    draw(block, 0, 0)
    if title:
        ax.set_title(title)
    return fig


def run_curves(runs, smooth=25, unit="step"):
    """Training loss per step (a moving average over `smooth` steps) and, where recorded, the
    error on held-out images, for several runs of an experiment's results: {name: figures}.
    Residual networks are drawn solid, their plain twins dashed, one colour per depth. `unit`
    names what the losses are counted in (a step, or an epoch for per-epoch losses)."""
    probes = any(r.get("probe_errors") for r in runs.values())
    fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(10 if probes else 5.5, 3.6),
                             squeeze=False, layout="constrained")
    colours = {}
    for name, run in runs.items():
        depth = name.removeprefix("plain").removeprefix("resnet")  # twins share a colour
        colour = colours.setdefault(depth, f"C{len(colours)}")
        style = {"color": colour, "ls": "--" if name.startswith("plain") else "-", "label": name}
        losses = np.asarray(run["step_losses"])
        k = min(smooth, len(losses))
        axes[0, 0].plot(np.arange(k, len(losses) + 1), np.convolve(losses, np.ones(k) / k, "valid"),
                        **style)
        if probes and run.get("probe_errors"):
            steps, errors = zip(*run["probe_errors"])
            axes[0, 1].plot(steps, 100 * np.asarray(errors), marker="o", ms=3, **style)
    axes[0, 0].set(xlabel=unit, ylabel="training loss", title="Training loss")
    if probes:
        axes[0, 1].set(xlabel=unit, ylabel="test error (%)", title="Test error")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def augmentations(images, transforms, copies=5, seed=0):
    """One row per named transform ({name: transform}): an original image, then `copies`
    augmented versions of it, each a new draw. `images` holds one image per row, N×1×H×W,
    uint8 or floats in [0, 1]."""
    images = np.asarray(images)
    images = images.astype(np.float32) / 255 if images.dtype == np.uint8 else images
    rows = len(transforms)
    fig, axes = plt.subplots(rows, copies + 1, figsize=(1.1 * (copies + 1) + 1.2, 1.1 * rows),
                             squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for line, image, (name, transform) in zip(axes, images, transforms.items()):
        views = [image] + list(transform(np.repeat(image[None], copies, axis=0), rng))
        for ax, view in zip(line, views):
            ax.imshow(view[0], cmap="gray", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
        line[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    axes[0, 0].set_title("original", fontsize=9)
    return fig


def depth_and_data(figures, spread=0.06):
    """The `depth_and_data` experiment's figures, two panels against the number of training
    images (log scale): test accuracy, and test error (log scale, where the same relative gap
    looks the same at every size). Each network's runs are dots (the networks' dots shifted
    apart by `spread`, in log10 units, so that they do not hide each other) and the median over
    seeds a line through the sizes."""
    sizes = list(figures["runs"].values())
    n = [entry["train_images"] for entry in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    names = list(figures["networks"])
    for i, name in enumerate(names):
        about = figures["networks"][name]
        shift = 10 ** (spread * (i - (len(names) - 1) / 2))
        median = np.array([100 * entry["median_test_acc"][name] for entry in sizes])
        runs = [(entry["train_images"] * shift, 100 * r["test_acc"])
                for entry in sizes for r in entry["runs"] if r["network"] == name]
        x, acc = zip(*runs)
        for ax, line, dots in ((axes[0], median, acc), (axes[1], 100 - median,
                                                          100 - np.array(acc))):
            ax.plot(n, line, "-", color=f"C{i}", label=f"{name}: {about['weight_layers']} "
                    f"weight layers, {about['parameters']:,} weights (median)")
            ax.plot(x, dots, "o", color=f"C{i}", ms=4, alpha=0.6, ls="none")
    axes[0].set(ylabel="test accuracy (%)", title="Test accuracy on 10,000 digits")
    axes[1].set(yscale="log", ylabel="test error (%, log scale)", title="Test error")
    for ax in axes:
        ax.set(xscale="log", xlabel="training images (log scale)")
        ax.set_xticks(n, [f"{k:,}" for k in n])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    ticker = plt.matplotlib.ticker
    axes[1].yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))  # 0.5, 1, 2, 5, 10 ...
    axes[1].yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes[0].legend(fontsize=8, loc="lower right")
    return fig


def time_shares(rows):
    """Stacked bars of where steps spend their time: {row label: {kind of layer: time}}, each
    row scaled to 100%. Kinds keep one colour across rows, in the order they first appear,
    "other" last."""
    kinds = list(dict.fromkeys(kind for shares in rows.values() for kind in shares))
    kinds = [k for k in kinds if k != "other"] + ["other"] * ("other" in kinds)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.3), layout="constrained")
    labels = list(rows)[::-1]  # the first row on top
    left = np.zeros(len(labels))
    for i, kind in enumerate(kinds):
        share = np.array([100 * rows[r].get(kind, 0) / sum(rows[r].values()) for r in labels])
        ax.barh(labels, share, left=left, color=f"C{i}", label=kind)
        for y, (x, w) in enumerate(zip(left, share)):
            if w >= 6:
                ax.text(x + w / 2, y, f"{w:.0f}%", ha="center", va="center", fontsize=8,
                        color="white")
        left += share
    ax.set(xlim=(0, 100), xlabel="share of the step's time (%)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig


def ladder(figures):
    """The kernel ladder (the `ladder` experiment's figures): DeepConvNet's images per second on
    each rung, and each rung's convolutions on the roofline of this machine, attainable
    GFLOP/s = min(peak, arithmetic intensity × bandwidth), from the measured GEMM peak and
    STREAM triad."""
    rungs = figures["rungs"]
    fig, (ax_rate, ax_roof) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    x = np.arange(len(rungs))
    for k, (task, label) in enumerate((("train", "training"), ("infer", "inference"))):
        rates = [r[f"{task}_images_per_s"] for r in rungs.values()]
        bars = ax_rate.bar(x + (k - 0.5) * 0.38, rates, 0.38, label=label)
        ax_rate.bar_label(bars, fmt="%.0f", fontsize=7)
    ax_rate.set(xticks=x, xticklabels=list(rungs), yscale="log", ylabel="images per second",
                title="DeepConvNet on each rung")
    ax_rate.legend()
    peak, bandwidth = figures["gemm_peak_gflops"], figures["stream_triad_gbps"]
    intensity = np.logspace(-1, 3, 200)
    ax_roof.plot(intensity, np.minimum(peak, intensity * bandwidth), "k-", lw=1.5)
    ax_roof.text(peak / bandwidth, peak * 1.15, f"GEMM peak {peak:.0f} GFLOP/s", fontsize=8)
    ax_roof.text(0.15, 0.15 * bandwidth * 1.3, f"memory {bandwidth:.0f} GB/s", rotation=33,
                 fontsize=8)
    for i, (name, rung) in enumerate(rungs.items()):
        ai = [layer["flops"] / layer["bytes"] for layer in rung["layers"]]
        rate = [layer["flops"] / layer["forward_s"] / 1e9 for layer in rung["layers"]]
        ax_roof.plot(ai, rate, "o", color=f"C{i + 2}", label=name, ms=5)
    ax_roof.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP per byte)",
                ylabel="GFLOP/s", title="Forward convolutions on the roofline")
    ax_roof.legend(fontsize=8)
    for ax in (ax_rate, ax_roof):
        ax.grid(alpha=0.3, which="both")
    return fig


def scaling(workers, panels, reference=None):
    """Speed-up against the number of workers, log-log, with the ideal line, one panel per
    {title: {label: speed-ups}}; `reference` an optional (workers, speed-up, label) point drawn
    on each."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, (title, curves) in zip(axes[0], panels.items()):
        ax.plot(workers, workers, color="0.6", ls=":", label="ideal")
        for label, speedups in curves.items():
            ax.plot(workers, speedups, label=label)
        if reference is not None:
            n, s, label = reference
            ax.plot([n], [s], "k*", ms=12, label=label)
        ax.set(xscale="log", yscale="log", xlabel="workers", title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("speed-up over one worker")
    axes[0, -1].legend(fontsize=8)
    return fig


def underflow(panels):
    """Loss scaling's reason, from {label: mixed.underflow-style entries} (each with "log2_bins",
    "log2_counts" and "layers"): left, the histogram of log₂ |dL/d output| of each, against
    float16's range (zero below 2⁻²⁴, subnormal up to 2⁻¹⁴, infinite from 2¹⁶); right, each
    layer's share of output gradients (solid) and weight gradients (hatched) that round to zero
    in float16."""
    fig, (hist, bars) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained",
                                     width_ratios=(3, 2))
    info = np.finfo(np.float16)
    hist.axvspan(-60, np.log2(float(info.smallest_subnormal)) - 1, color="0.85",
                 label="rounds to 0 in float16")
    hist.axvspan(np.log2(float(info.smallest_subnormal)) - 1,
                 np.log2(float(info.smallest_normal)), color="0.93", label="subnormal")
    hist.axvline(np.log2(float(info.max)), color="0.4", ls=":", label="float16's largest")
    width = 0.8 / len(panels)
    for k, (label, entry) in enumerate(panels.items()):
        edges, counts = np.array(entry["log2_bins"]), np.array(entry["log2_counts"])
        hist.bar(edges[:-1] + k * width, 100 * counts / counts.sum(), width=width, align="edge",
                 label=label)
        names = [row["layer"].split()[-1] + " " + row["layer"].split()[0]
                 for row in entry["layers"]]
        y = np.arange(len(names)) + k * width
        bars.barh(y, [100 * row["output"] for row in entry["layers"]], height=width / 2,
                  color=f"C{k}", label=f"{label}: dL/d output")
        bars.barh(y + width / 2, [100 * row["weight"] for row in entry["layers"]],
                  height=width / 2, color=f"C{k}", hatch="//", alpha=0.6,
                  label=f"{label}: dL/dW")
    # one unit past the last bin: float16's largest value (2¹⁶ less a bit) is drawn, not on the edge
    hist.set(xlim=(edges[0], edges[-1] + 1), xlabel="log₂ |gradient|",
             ylabel="share of the gradient values (%)")
    hist.legend(fontsize=8)
    bars.set_yticks(np.arange(len(names)) + 0.4 - width / 2, names)
    bars.invert_yaxis()
    bars.set(xlabel="gradient values that round to 0 in float16 (%)")
    bars.legend(fontsize=7)
    for ax in (hist, bars):
        ax.grid(alpha=0.3)
    return fig


def scenes(images, titles=(), masks=None, detections=None, cols=4, size=2.0):
    """MNIST scenes (N, 1, H, W) in rows of `cols`: with `masks` (N, H, W) the label maps
    instead, one colour per class (background black); with `detections` (per scene, a list of
    {"box": [x0, y0, x1, y1], "class": d, "score": p}, or (boxes, classes) of the truth) their
    boxes drawn and named."""
    import matplotlib.patches as patches
    shown = np.asarray(images)[:, 0] if masks is None else np.asarray(masks)
    fig = _grid(shown, cols, titles, size=size, cmap="gray" if masks is None else _CLASSES)
    if masks is not None:
        for ax in fig.axes:
            for image in ax.get_images():
                image.set_clim(-0.5, 10.5)
    for ax, found in zip(fig.axes, detections or []):
        if isinstance(found, tuple):  # the truth: (boxes, classes)
            found = [{"box": b, "class": c} for b, c in zip(*found)]
        for d in found:
            x0, y0, x1, y1 = d["box"]
            ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                           edgecolor="tab:orange", linewidth=1.2))
            label = str(d["class"]) + (f" {d['score']:.2f}" if "score" in d else "")
            ax.text(x0 - 0.5, y0 - 1.5, label, color="tab:orange", fontsize=7)
    return fig


# Background black, then a colour per digit (matplotlib's tab10).
_CLASSES = plt.matplotlib.colors.ListedColormap(["black", *plt.get_cmap("tab10").colors])


def png(texts, titles=(), width=6.0):
    """Pictures an experiment keeps as base64 PNG text (grids of images), side by side."""
    import base64
    import io

    from PIL import Image
    pictures = []
    for text in texts:
        with Image.open(io.BytesIO(base64.b64decode(text))) as image:
            pictures.append(np.asarray(image))
    high = max(p.shape[0] / p.shape[1] for p in pictures) * width / len(pictures)
    fig, axes = plt.subplots(1, len(pictures), figsize=(width, high + 0.4), squeeze=False,
                             layout="constrained")
    for ax, picture, title in zip(axes.flat, pictures, [*titles] + [None] * len(pictures)):
        ax.imshow(picture, cmap="gray", vmin=0, vmax=255)
        ax.axis("off")
        if title:
            ax.set_title(title, fontsize=9)
    return fig


def pictures(images, titles=(), cols=4, size=2.0):
    """Images (N, C, H, W) in [0, 1], gray (C = 1) or colour (C = 3), in rows of `cols`."""
    images = np.clip(np.asarray(images, np.float32), 0, 1)
    shown = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    fig = _grid(shown, cols, titles, size=size)
    for ax in fig.axes:
        for image in ax.get_images():
            image.set_clim(0, 1)
    return fig


def returns(values, window=100, goal=None, title=None):
    """Each episode's return while an agent learns (dots) and their mean over the last `window`
    episodes (line), with the `goal` as a dashed line."""
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.insert(values, 0, 0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    mean = (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)
    fig, ax = plt.subplots(figsize=(6.5, 3), layout="constrained")
    ax.plot(values, ".", ms=2, alpha=0.3, label="each episode")
    ax.plot(mean, label=f"mean of the last {window}")
    if goal is not None:
        ax.axhline(goal, ls="--", c="gray", label=f"goal {goal:g}")
    ax.set(xlabel="episode", ylabel="return", title=title)
    ax.legend(fontsize=8)
    return fig


def ilsvrc(rows, human=None):
    """The ImageNet challenge's top-5 error by year: a bar per row ({"year", "team", "place",
    "top5_error"}, as models.ILSVRC_TOP5), rows of the same year side by side and a runner-up
    hatched, each labelled with its team and error; `human` ({"top5_error"}) a dashed line."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    years = sorted({r["year"] for r in rows})
    for year in years:
        same = [r for r in rows if r["year"] == year]
        width = 0.8 / len(same)
        for k, r in enumerate(same):
            x = year - 0.4 + width * (k + 0.5)
            bar = ax.bar(x, r["top5_error"], width * 0.92, color="C0",
                         alpha=1.0 if r["place"] == 1 else 0.5,
                         hatch=None if r["place"] == 1 else "//", edgecolor="white")
            ax.bar_label(bar, [f"{r['team']}\n{r['top5_error']:g}%"], fontsize=7, padding=2)
    if human is not None:
        ax.axhline(human["top5_error"], ls="--", c="gray",
                   label=f"human estimate {human['top5_error']:g}%")
        ax.legend(loc="upper right", fontsize=8)
    top = max(r["top5_error"] for r in rows)
    ax.set(xticks=years, ylim=(0, top * 1.3), xlabel="year of the challenge",
           ylabel="top-5 error (%)", title="ImageNet classification: the winners' top-5 error")
    ax.grid(axis="y", alpha=0.3)
    return fig


def transfer(runs, ways=None, labels=None):
    """Test accuracy of each way of learning from a few labels, one panel per number of labels
    ({n: {"runs": [{"way", "seed", "test_acc"}]}}, as the experiment transfer records): a dot
    per seed and a bar at the median. `ways` orders them, `labels` names them ({way: text})."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False,
                             layout="constrained", sharey=True)
    for ax, (n, entry) in zip(axes.flat, runs.items()):
        order = ways or list(dict.fromkeys(r["way"] for r in entry["runs"]))
        for i, way in enumerate(order):
            accs = [100 * r["test_acc"] for r in entry["runs"] if r["way"] == way]
            ax.bar(i, np.median(accs), 0.6, color=f"C{i}", alpha=0.5)
            ax.plot([i] * len(accs), accs, "o", color=f"C{i}", ms=4)
        ax.set(xticks=range(len(order)), title=f"{int(n):,} labelled digits")
        ax.set_xticklabels([(labels or {}).get(w, w) for w in order], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy (%)")
    return fig


def accuracy_by_epoch(groups, first=1):
    """Test accuracy (%) after each epoch from epoch `first` on, a line per run: one colour per
    group ({label: [runs]}, each run {"seed", "test_acc_by_epoch"}) and one line style per seed,
    to set the gap between groups against how far a run moves from one epoch to the next."""
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    styles = {}
    for i, (label, runs) in enumerate(groups.items()):
        for run in runs:
            acc = 100 * np.asarray(run["test_acc_by_epoch"][first - 1:])
            style = styles.setdefault(run["seed"], ["-", "--", ":", "-."][len(styles) % 4])
            ax.plot(np.arange(first, first + len(acc)), acc, marker="o", ms=3, ls=style,
                    color=f"C{i}", label=f"{label}, seed {run['seed']}")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=len(groups))
    return fig
