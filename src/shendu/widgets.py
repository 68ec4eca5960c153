"""Widgets for the chapters "Why go deeper?" (build a stack and see what one unit sees, compare one
large convolution with a stack of 3×3 ones, measure a trained network's effective field) and
"Data augmentation" (turn each transform's strength and see the digits change).

    >>> from shendu import widgets
    >>> explorer = widgets.receptive_field_explorer(image)
    >>> explorer                  # the live widget
    >>> explorer.rows             # what it shows, computed by shendu.receptive

The three explorers (receptive field, parameters, augmentation) are anywidgets: their controls,
tables and pictures are drawn and computed in the page by `explorers.js`, so they respond in
JupyterLab, VS Code and Colab (ipywidgets 7.7 and 8) and also in the published book, where no
kernel runs. The page's arithmetic mirrors `shendu.receptive` and `shendu.augment`, and the
browser tests check that the two agree; here, each explorer's traits are the page's state, and
its properties compute what it shows in Python. The effective-field viewer needs a model's
backward pass, so it draws with matplotlib into an Image control (a PNG, saved with the widget
state: the built book shows its first picture). Not imported by `import shendu`.
"""
import base64
import dataclasses
import io
from pathlib import Path

import anywidget
import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import traitlets as T
from matplotlib.patches import Rectangle

from . import augment, receptive
from .errors import ShenduError

__all__ = ["receptive_field_explorer", "parameter_explorer", "effective_field_viewer",
           "augmentation_explorer", "ReceptiveFieldExplorer", "ParameterExplorer",
           "EffectiveFieldViewer", "AugmentationExplorer"]


def receptive_field_explorer(image=None, preset="two 3×3"):
    """Build a stack of convolutions and poolings (or pick a preset) and see which pixels of
    `image` (a square array, e.g. an MNIST digit) one unit of the last layer sees."""
    return ReceptiveFieldExplorer(image, preset)


def parameter_explorer(channels=64, kernel_size=7, size=28):
    """Weights and multiply-adds of one k×k convolution against stacked 3×3 convolutions."""
    return ParameterExplorer(channels, kernel_size, size)


def effective_field_viewer(model, image):
    """A unit's gradient with respect to `image` beside its theoretical field."""
    return EffectiveFieldViewer(model, image)


def augmentation_explorer(images, **strengths):
    """Sliders for each transform's strength over `images` (N×1×H×W, uint8 or floats in [0, 1]):
    originals above augmented copies, or random augmented batches ("what the model sees").
    `strengths` set the starting sliders, e.g. rotation=15."""
    return AugmentationExplorer(images, **strengths)


def _slider(description, value, low, high, step=1):
    return W.IntSlider(value=value, min=low, max=high, step=step, description=description,
                       continuous_update=False, style={"description_width": "initial"})


def _show_image(ax, image, size):
    """The image (H×W, C×H×W or 1×C×H×W; channels averaged) stretched over the input's
    size×size pixel grid, pixel i centred at i."""
    image = np.zeros((size, size)) if image is None else np.asarray(image)
    image = image.reshape(-1, *image.shape[-2:]).mean(axis=0)
    ax.imshow(image, cmap="gray", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    if image.shape[0] != size:
        ax.set_xlabel(f"{image.shape[0]}×{image.shape[1]} image stretched to {size}×{size}")


def _draw_window(ax, field, u, v, color="tab:orange", fill=True):
    """Unit (u, v)'s field: solid (filled) where it covers the image, dashed where it reaches
    into the padding, its centre marked; the axes grow to show all of it."""
    (top, bottom), (left, right) = field.window(u, v)
    (ctop, cbottom), (cleft, cright) = field.clipped(u, v)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                           fill=False, ls="--", lw=1.2, ec=color))
    ax.add_patch(Rectangle((cleft - 0.5, ctop - 0.5), cright - cleft + 1, cbottom - ctop + 1,
                           fill=fill, fc=color, alpha=0.35 if fill else 1, ec=color, lw=2))
    ax.plot((left + right) / 2, (top + bottom) / 2, "+", color=color, ms=10, mew=2)
    n = field.input_size
    ax.set_xlim(min(-0.5, left - 1), max(n - 0.5, right + 1))
    ax.set_ylim(max(n - 0.5, bottom + 1), min(-0.5, top - 1))


# -- the explorers: computed and drawn in the page (explorers.js) ------------------------------
class _Explorer(anywidget.AnyWidget):
    """An explorer whose page module is explorers.js; `explorer` says which one it draws."""

    _esm = Path(__file__).with_name("explorers.js")
    explorer = T.Unicode().tag(sync=True)


def _layer_spec(layer):
    """A Layer's arguments for the page; in_channels dropped: edited stacks chain their
    channels from layer to layer."""
    return {k: v for k, v in dataclasses.asdict(layer).items() if k != "in_channels"}


def _pixels(image, size):
    """One square image (H×W, C×H×W or 1×C×H×W; channels averaged; uint8 or floats in [0, 1])
    as 0-255 gray levels for the page; None is a black size×size square."""
    image = np.zeros((size, size), np.uint8) if image is None else np.asarray(image)
    scale = 1 if image.dtype.kind in "iu" else 255
    gray = image.reshape(-1, *image.shape[-2:]).mean(axis=0) * scale
    if gray.ndim != 2 or gray.shape[0] != gray.shape[1]:
        raise ShenduError(f"the explorer shows one square image, got shape {image.shape}")
    return {"size": gray.shape[0], "pixels": np.clip(gray, 0, 255).round().astype(int).ravel()
            .tolist()}


class ReceptiveFieldExplorer(_Explorer):
    """A stack of layers (one `selected` layer edited at a time), the unit (u, v) of the last
    layer, a picture of its field over the image and a table per layer. `load(name)` loads a
    preset; `rows` and `problem` are what the page shows, from shendu.receptive."""

    explorer = T.Unicode("receptive").tag(sync=True)
    presets = T.Dict().tag(sync=True)  # name: {layers, input_size, in_channels}
    preset = T.Unicode().tag(sync=True)
    layers = T.List(T.Dict()).tag(sync=True)  # Layer arguments, one dict per layer
    input_size = T.Int(28).tag(sync=True)
    in_channels = T.Int(1).tag(sync=True)
    selected = T.Int(0).tag(sync=True)
    unit = T.List(T.Int(), allow_none=True, default_value=None).tag(sync=True)  # (u, v)
    image = T.Dict().tag(sync=True)  # {size, pixels: gray levels row by row}

    def __init__(self, image=None, preset="two 3×3"):
        presets = {}
        for name in receptive.presets():  # all of them: the page has no kernel to build one
            stack = receptive.preset(name)
            presets[name] = {"layers": [_layer_spec(layer) for layer in stack.layers],
                             "input_size": stack.input_size, "in_channels": stack.in_channels}
        super().__init__(presets=presets, image=_pixels(image, 28))
        self.load(preset)

    def load(self, name):
        """Load a preset, with the centre unit of its last layer."""
        if name not in self.presets:
            raise ShenduError(f"unknown preset {name!r}; choose one of: {', '.join(self.presets)}")
        stack = self.presets[name]
        with self.hold_sync():
            self.preset, self.layers = name, stack["layers"]
            self.input_size, self.in_channels = stack["input_size"], stack["in_channels"]
            self.selected = len(self.layers) - 1
            size = self.rows[-1].out_size
            self.unit = [size // 2, size // 2]

    @property
    def rows(self):
        """A receptive.LayerField per layer; [] if the stack does not work (see `problem`)."""
        try:
            return self._fields()
        except ShenduError:
            return []

    @property
    def problem(self):
        """Why the stack does not work ("" if it does), as the page says it."""
        try:
            self._fields()
        except ShenduError as error:
            return str(error)
        return ""

    def _fields(self):
        layers = [receptive.Layer(**spec) for spec in self.layers]
        return receptive.fields(layers, self.input_size, self.in_channels)


class ParameterExplorer(_Explorer):
    """Channels, kernel size and map size → weights and multiply-adds of one k×k convolution
    against its 3×3 stack (`rows`, from receptive.param_comparison), as a table and plots."""

    explorer = T.Unicode("parameters").tag(sync=True)
    channels = T.Int(64).tag(sync=True)
    kernel_size = T.Int(7).tag(sync=True)
    size = T.Int(28).tag(sync=True)

    def __init__(self, channels=64, kernel_size=7, size=28):
        receptive.param_comparison(channels, kernel_size, size)  # refuses what it cannot show
        super().__init__(channels=channels, kernel_size=kernel_size, size=size)

    @property
    def rows(self):
        return receptive.param_comparison(self.channels, self.kernel_size, self.size)


class AugmentationExplorer(_Explorer):
    """One slider per transform (0 turns it off); `transform()` is what they describe, ready for
    `Trainer(augment=...)`. The page computes the transforms with its own random numbers ("new
    draw" draws again): originals above two augmented copies, or a random batch of 24 ("what
    the model sees"). It holds the first `SHIPPED` images."""

    SLIDERS = {  # name: (label, maximum)
        "rotation": ("rotation (±°)", 45), "shift": ("shift (±px)", 8),
        "scale": ("scale (±%)", 40), "shear": ("shear (±°)", 40),
        "elastic": ("elastic α (σ 4)", 40), "brightness": ("brightness (±%)", 80),
        "contrast": ("contrast (±%)", 80), "erasing": ("erasing (% of images)", 100)}
    MODES = ("originals and copies", "what the model sees")
    SHIPPED = 256

    explorer = T.Unicode("augmentation").tag(sync=True)
    images = T.Dict().tag(sync=True)  # {n, h, w, pixels: base64 of the uint8 gray levels}
    labels = T.Dict(SLIDERS).tag(sync=True)
    modes = T.List(list(MODES)).tag(sync=True)
    strengths = T.Dict().tag(sync=True)
    mode = T.Unicode(MODES[0]).tag(sync=True)
    draw = T.Int(0).tag(sync=True)

    def __init__(self, images, **strengths):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 1 or not len(images):
            raise ShenduError(f"augmentation_explorer needs images N×1×H×W, got {images.shape}")
        unknown = set(strengths) - set(self.SLIDERS)
        if unknown:
            raise ShenduError(f"unknown strengths {sorted(unknown)}; known: {list(self.SLIDERS)}")
        self.height, self.width = images.shape[2:]
        shown = images[:self.SHIPPED, 0]
        gray = shown if images.dtype == np.uint8 else (np.clip(shown, 0, 1) * 255).round()
        pixels = base64.b64encode(gray.astype(np.uint8).tobytes()).decode()
        super().__init__(images={"n": len(shown), "h": self.height, "w": self.width,
                                 "pixels": pixels},
                         strengths={name: strengths.get(name, 0) for name in self.SLIDERS})

    def transform(self):
        """The transforms the sliders describe, in the order they act."""
        s, h, w = self.strengths, self.height, self.width
        steps = []
        if s["rotation"] or s["shift"] or s["scale"] or s["shear"]:
            steps.append(augment.RandomAffine(
                degrees=s["rotation"], translate=(s["shift"] / w, s["shift"] / h),
                scale=(1 - s["scale"] / 100, 1 + s["scale"] / 100), shear=s["shear"]))
        if s["elastic"]:
            steps.append(augment.ElasticDistortion(alpha=s["elastic"], sigma=4))
        if s["brightness"] or s["contrast"]:
            steps.append(augment.ColorJitter(s["brightness"] / 100, s["contrast"] / 100))
        if s["erasing"]:
            steps.append(augment.RandomErasing(p=s["erasing"] / 100))
        return augment.Compose(steps)


# -- the effective receptive field ------------------------------------------------------------
class EffectiveFieldViewer(W.VBox):
    """Pick a unit (channel, u, v) of the model's last feature map; see |∂unit/∂pixel|. The
    picture is drawn by `_draw(fig)` both into an Image control and for `figure()`."""

    figsize = (8, 3.8)

    def __init__(self, model, image):
        self.model, self.image = model, image
        self.result = receptive.effective_field(model, image)  # the most active centre unit
        field = self.result.field
        c, u, v = self.result.unit
        self.c = _slider("channel", c, 0, field.out_channels - 1)
        self.u = _slider("unit u (row)", u, 0, field.out_size - 1)
        self.v = _slider("unit v (column)", v, 0, field.out_size - 1)
        self.plot = W.Image(format="png")
        super().__init__([W.HBox([self.c, self.u, self.v]), self.plot])
        for slider in (self.c, self.u, self.v):
            slider.observe(lambda change: self._update(), names="value")
        self._redraw()

    def figure(self):
        """The current picture as a matplotlib Figure."""
        fig = plt.figure(figsize=self.figsize, layout="constrained")
        plt.close(fig)  # a notebook shows it when a cell returns it, not again at the cell's end
        self._draw(fig)
        return fig

    def _redraw(self):
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")
        self.plot.value = buffer.getvalue()

    def _update(self):
        unit = (self.c.value, self.u.value, self.v.value)
        self.result = receptive.effective_field(self.model, self.image, unit)
        self._redraw()

    def _draw(self, fig):
        result, (c, u, v) = self.result, self.result.unit
        ax_image, ax_grad = fig.subplots(1, 2)
        _show_image(ax_image, self.image, result.field.input_size)
        ax_grad.imshow(result.gradient, cmap="magma")
        for ax in (ax_image, ax_grad):
            _draw_window(ax, result.field, u, v, color="tab:cyan", fill=ax is ax_image)
        size = result.field.size
        ax_image.set_title(f"theoretical field of unit ({c}, {u}, {v}): {size}×{size}",
                           fontsize=9)
        ax_grad.set_title("|∂unit/∂pixel|: the effective field" if result.gradient.any() else
                          f"the unit is {result.activation:g} here: no gradient reaches the "
                          "image", fontsize=9)


