"""Widgets for the chapters "Why go deeper?" (build a stack and see what one unit sees, compare one
large convolution with a stack of 3×3 ones, measure a trained network's effective field) and
"Data augmentation" (turn each transform's strength and see the digits change).

    >>> from shendu import widgets
    >>> explorer = widgets.receptive_field_explorer(image)
    >>> explorer                  # the live widget
    >>> explorer.figure()         # the same picture as a static matplotlib Figure (for the book)

Only the ipywidgets 7.7 API is used (Colab ships 7.7.1), so they also run under ipywidgets 8.
All arithmetic comes from `shendu.receptive`; this module only draws. Each widget draws its
figure with one method, `_draw(fig)`, both into an Image control (a PNG: the picture is part of the
saved widget state and shows in the built book without a kernel, where an Output widget's
JavaScript would not load) and for `figure()`. Not imported by `import shendu`.
"""
import dataclasses
import html
import io
from contextlib import contextmanager

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
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


class _Widget(W.VBox):
    """A VBox (so it displays and saves like any widget) with a figure drawn by `_draw`."""

    figsize = (9, 3.6)

    def __init__(self, children):
        self.plot = W.Image(format="png")
        self._quiet = False
        super().__init__([*children, self.plot])

    def figure(self):
        """The current picture as a matplotlib Figure."""
        fig = plt.figure(figsize=self.figsize, layout="constrained")
        plt.close(fig)  # a notebook shows it when a cell returns it, not again at the cell's end
        self._draw(fig)
        return fig

    def _draw(self, fig):
        raise NotImplementedError

    def _redraw(self):
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")
        self.plot.value = buffer.getvalue()

    @contextmanager
    def _quietly(self):
        """Set controls from code without their observers redrawing halfway through."""
        was, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = was

    def _on_change(self, handler, *controls):
        def call(change):
            if not self._quiet:
                handler()
        for control in controls:
            control.observe(call, names="value")


def _slider(description, value, low, high, step=1):
    return W.IntSlider(value=value, min=low, max=high, step=step, description=description,
                       continuous_update=False, style={"description_width": "initial"})


def _table(header, rows, bold=None):
    """An HTML table; numbers are right-aligned with thousands separators; row `bold` stands out."""
    def cell(tag, value):
        text = f"{value:,}" if isinstance(value, (int, np.integer)) else html.escape(str(value))
        align = "right" if isinstance(value, (int, np.integer)) else "left"
        return f'<{tag} style="text-align:{align};padding:1px 8px">{text}</{tag}>'
    lines = ["<tr>" + "".join(cell("th", h) for h in header) + "</tr>"]
    lines += ["<tr" + (' style="font-weight:bold;background:#eef"' if i == bold else "") + ">"
              + "".join(cell("td", c) for c in row) + "</tr>" for i, row in enumerate(rows)]
    return "<table>" + "".join(lines) + "</table>"


def _problem(text):
    return f'<p style="color:#b00">{html.escape(text)}</p>' if text else ""


def _label(index, spec):
    try:
        return f"{index + 1}: {receptive.Layer(**spec)}"
    except ShenduError:
        return f"{index + 1}: {spec['kind']} (invalid)"


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


# -- the receptive field explorer -------------------------------------------------------------
class ReceptiveFieldExplorer(_Widget):
    """Controls for a stack of layers (one selected layer edited at a time), the unit (u, v) of
    the last layer, a figure of the field over the image and a table per layer."""

    def __init__(self, image=None, preset="two 3×3"):
        self.image = image
        self.specs = []  # one dict of Layer arguments per layer: editable, checked on use
        self.rows, self.problem = [], None
        self.preset = W.Dropdown(options=receptive.presets(), value=preset, description="preset")
        self.size = _slider("input size", 28, 4, 256)
        self.channels = _slider("input channels", 1, 1, 64)
        self.layer = W.Dropdown(description="layer")
        self.kind = W.Dropdown(options=list(receptive.KINDS), description="kind")
        self.kernel = _slider("kernel", 3, 1, 11)
        self.stride = _slider("stride", 1, 1, 4)
        self.padding = _slider("padding", 0, 0, 5)
        self.dilation = _slider("dilation", 1, 1, 4)
        self.out_channels = _slider("out channels", 1, 1, 2048)
        self.add = W.Button(description="add layer")
        self.remove = W.Button(description="remove layer")
        self.u, self.v = _slider("unit u (row)", 0, 0, 0), _slider("unit v (column)", 0, 0, 0)
        self.message, self.table = W.HTML(), W.HTML()
        # the selected layer's Layer arguments, each set by one control
        self.editor = {"kind": self.kind, "kernel_size": self.kernel, "stride": self.stride,
                       "padding": self.padding, "dilation": self.dilation,
                       "out_channels": self.out_channels}
        editor = list(self.editor.values())
        super().__init__([
            W.HBox([self.preset, self.size, self.channels]),
            W.HBox([self.layer, self.add, self.remove]),
            W.HBox(editor[:3]), W.HBox(editor[3:]),
            W.HBox([self.u, self.v]), self.message, self.table])
        self.preset.observe(lambda change: self._load(change["new"]), names="value")
        self._on_change(self._edit, *editor)
        self._on_change(self._select, self.layer)
        self._on_change(self._update, self.size, self.channels, self.u, self.v)
        self.add.on_click(lambda _: self._insert())
        self.remove.on_click(lambda _: self._delete())
        self._load(preset)

    # the stack
    def _load(self, name):
        try:
            stack = receptive.preset(name)
        except ShenduError as error:  # a model not in this version's zoo, for instance
            self.message.value = _problem(str(error))
            return
        # in_channels dropped: edited stacks chain their channels from layer to layer
        self.specs = [{k: v for k, v in dataclasses.asdict(layer).items() if k != "in_channels"}
                      for layer in stack.layers]
        with self._quietly():
            self.size.value, self.channels.value = stack.input_size, stack.in_channels
        self._select(len(self.specs) - 1, centre=True)

    def _insert(self):
        i = self.layer.value + 1
        self.specs.insert(i, dict(self.specs[i - 1]))
        self._select(i)

    def _delete(self):
        del self.specs[self.layer.value]
        self._select(min(self.layer.value, len(self.specs) - 1))

    def _select(self, index=None, centre=False):
        """Show layer `index` (default: the one picked) in the editor and redraw."""
        index = self.layer.value if index is None else index
        spec = self.specs[index]
        with self._quietly():
            self.layer.options = [(_label(i, s), i) for i, s in enumerate(self.specs)]
            self.layer.value = index
            for key, control in self.editor.items():
                if spec[key] is not None:  # a pooling layer leaves the channel count as it is
                    control.value = spec[key]
        self.remove.disabled = len(self.specs) == 1
        self._update(centre)

    def _edit(self):
        spec = {key: control.value for key, control in self.editor.items()}
        if spec["kind"] != "conv":
            spec["out_channels"] = None  # pooling keeps its input's channels
        self.specs[self.layer.value] = {**self.specs[self.layer.value], **spec}
        self._select()

    # the arithmetic and the views
    def _update(self, centre=False):
        try:
            layers = [receptive.Layer(**spec) for spec in self.specs]
            self.rows = receptive.fields(layers, self.size.value, self.channels.value)
            self.problem = None
        except ShenduError as error:
            self.rows, self.problem = [], str(error)
        self.out_channels.disabled = self.kind.value != "conv"
        if self.rows:
            size = self.rows[-1].out_size
            with self._quietly():
                for slider in (self.u, self.v):
                    slider.max = size - 1
                    slider.value = size // 2 if centre else min(slider.value, size - 1)
        self.message.value = _problem(self.problem)
        self.table.value = self._html()
        self._redraw()

    def _html(self):
        if not self.rows:
            return ""
        rows = [("input", f"{self.size.value}×{self.size.value}×{self.channels.value}", 1, 1,
                 0, 0, 0, "")]
        rows += [(f"{r.index}: {r.layer}", f"{r.out_size}×{r.out_size}×{r.out_channels}",
                  r.size, r.stride, r.weights, r.kernel_weights, r.macs, r.note)
                 for r in self.rows]
        rows.append(("total", "", "", "", *(sum(getattr(r, key) for r in self.rows)
                                            for key in ("weights", "kernel_weights", "macs")), ""))
        return _table(("layer", "output", "field", "effective stride", "weights",
                       "weights w/o bias", "multiply-adds", "note"), rows,
                      bold=self.layer.value + 1)

    def _draw(self, fig):
        ax_image, ax_sizes = fig.subplots(1, 2, width_ratios=(1, 1.4))
        _show_image(ax_image, self.image, self.size.value)
        if self.problem:
            ax_image.set_title("no valid stack", fontsize=10)
            ax_sizes.axis("off")
            ax_sizes.text(0, 0.5, self.problem, transform=ax_sizes.transAxes, wrap=True,
                          va="center", fontsize=9, color="#b00")
            return
        last = self.rows[-1]
        u, v = self.u.value, self.v.value
        _draw_window(ax_image, last, u, v)
        (top, bottom), (left, right) = last.window(u, v)
        ax_image.set_title(f"unit ({u}, {v}) of layer {last.index} sees\nrows {top}…{bottom}, "
                           f"columns {left}…{right}", fontsize=9)
        index = [r.index for r in self.rows]
        ax_sizes.bar(index, [r.size for r in self.rows], color="tab:orange", label="field size")
        ax_sizes.set(xlabel="layer", ylabel="field size (pixels)", xticks=index,
                     title="what one unit of each layer sees")
        ax_stride = ax_sizes.twinx()
        ax_stride.step(index, [r.stride for r in self.rows], "k.-", where="mid",
                       label="effective stride")
        ax_stride.set(ylabel="effective stride (pixels)", ylim=(0, None))
        ax_sizes.figure.legend(loc="outside lower center", ncols=2, fontsize=8)


# -- one large kernel against stacked 3×3 -----------------------------------------------------
class ParameterExplorer(_Widget):
    """Channels, kernel size and map size → a table and plots of weights and multiply-adds."""

    def __init__(self, channels=64, kernel_size=7, size=28):
        self.channels = _slider("channels C", channels, 1, 512)
        self.kernel = _slider("kernel k", kernel_size, 3, 15, step=2)
        self.size = _slider("map size", size, 1, 224)
        self.table = W.HTML()
        super().__init__([W.HBox([self.channels, self.kernel, self.size]), self.table])
        self._on_change(self._update, self.channels, self.kernel, self.size)
        self._update()

    def _rows(self, kernel_size):
        return receptive.param_comparison(self.channels.value, kernel_size, self.size.value)

    def _update(self):
        rows = self._rows(self.kernel.value)
        big, stack = rows
        self.table.value = _table(
            ("stack", "layers (ReLUs)", "field", "weights", "weights w/o bias", "multiply-adds"),
            [tuple(row.values()) for row in rows]) + (
            f"<p>The 3×3 stack needs {stack['kernel_weights'] / big['kernel_weights']:.0%} of "
            f"the weights and has {stack['layers']} nonlinearities instead of 1.</p>")
        self._redraw()

    def _draw(self, fig):
        k = self.kernel.value
        sizes = list(range(3, max(k, 11) + 1, 2))
        curves = [self._rows(n) for n in sizes]
        for ax, key, label in zip(fig.subplots(1, 2), ("weights", "macs"),
                                  ("weights", "multiply-adds per image")):
            for which, style in ((0, "o-"), (1, "s-")):
                ax.plot(sizes, [rows[which][key] for rows in curves], style,
                        label=("one k×k", "stacked 3×3")[which])
            ax.axvline(k, color="gray", ls=":")
            ax.set(xlabel="field size k (pixels)", ylabel=label, xticks=sizes,
                   title=f"{label}, C = {self.channels.value}")
            ax.legend()
            ax.grid(alpha=0.3)


# -- the effective receptive field ------------------------------------------------------------
class EffectiveFieldViewer(_Widget):
    """Pick a unit (channel, u, v) of the model's last feature map; see |∂unit/∂pixel|."""

    figsize = (8, 3.8)

    def __init__(self, model, image):
        self.model, self.image = model, image
        self.result = receptive.effective_field(model, image)  # the most active centre unit
        field = self.result.field
        c, u, v = self.result.unit
        self.c = _slider("channel", c, 0, field.out_channels - 1)
        self.u = _slider("unit u (row)", u, 0, field.out_size - 1)
        self.v = _slider("unit v (column)", v, 0, field.out_size - 1)
        super().__init__([W.HBox([self.c, self.u, self.v])])
        self._on_change(self._update, self.c, self.u, self.v)
        self._redraw()

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


# -- the augmentation explorer -----------------------------------------------------------------
class AugmentationExplorer(_Widget):
    """One slider per transform (0 turns it off); `transform()` is what they describe, ready for
    `Trainer(augment=...)`. "New draw" draws new random numbers for the same settings."""

    figsize = (9, 4.2)
    SLIDERS = {  # name: (label, maximum)
        "rotation": ("rotation (±°)", 45), "shift": ("shift (±px)", 8),
        "scale": ("scale (±%)", 40), "shear": ("shear (±°)", 40),
        "elastic": ("elastic α (σ 4)", 40), "brightness": ("brightness (±%)", 80),
        "contrast": ("contrast (±%)", 80), "erasing": ("erasing (% of images)", 100)}
    MODES = ("originals and copies", "what the model sees")
    SHOWN, BATCH = 6, 24

    def __init__(self, images, **strengths):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 1 or not len(images):
            raise ShenduError(f"augmentation_explorer needs images N×1×H×W, got {images.shape}")
        unknown = set(strengths) - set(self.SLIDERS)
        if unknown:
            raise ShenduError(f"unknown strengths {sorted(unknown)}; known: {list(self.SLIDERS)}")
        self.images = images.astype(np.float32) / 255 if images.dtype == np.uint8 else images
        self.sliders = {name: _slider(label, strengths.get(name, 0), 0, high)
                        for name, (label, high) in self.SLIDERS.items()}
        self.mode = W.ToggleButtons(options=self.MODES, value=self.MODES[0])
        self.again = W.Button(description="new draw")
        self.draw = 0
        self.again.on_click(lambda _: self._next())
        self.described = W.HTML()
        rows = list(self.sliders.values())
        super().__init__([W.HBox(rows[:4]), W.HBox(rows[4:]), W.HBox([self.mode, self.again]),
                          self.described])
        self._on_change(self._update, self.mode, *rows)
        self._update()

    def transform(self):
        """The transforms the sliders describe, in the order they act."""
        s = {name: slider.value for name, slider in self.sliders.items()}
        h, w = self.images.shape[2:]
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

    def _next(self):
        self.draw += 1
        self._redraw()

    def _update(self):
        self.described.value = f"<code>{html.escape(repr(self.transform()))}</code>"
        self._redraw()

    def _draw(self, fig):
        rng = np.random.default_rng(self.draw)
        transform = self.transform()
        if self.mode.value == self.MODES[0]:
            shown = self.images[:self.SHOWN]
            rows = [("original", shown)] + [(f"draw {k + 1}", transform(shown, rng))
                                            for k in range(2)]
        else:
            pick = rng.choice(len(self.images), min(self.BATCH, len(self.images)), replace=False)
            batch = transform(self.images[pick], rng)
            rows = [("", batch[k:k + self.BATCH // 3]) for k in range(0, len(batch), self.BATCH // 3)]
        columns = max(len(images) for _, images in rows)
        axes = fig.subplots(len(rows), columns, squeeze=False)
        for (label, images), line in zip(rows, axes):
            for k, ax in enumerate(line):
                ax.set_axis_off()
                if k < len(images):
                    ax.imshow(images[k, 0], cmap="gray", vmin=0, vmax=1)
            line[0].set_axis_on()
            line[0].set(xticks=[], yticks=[], ylabel=label)
