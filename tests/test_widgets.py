"""The chapter's widgets: drawn at construction, redrawn by their controls, invalid stacks
explained in place, and a static figure identical to what the widget shows."""
import io

import matplotlib
import numpy as np
import pytest
from matplotlib.patches import Rectangle

import shendu
from shendu import models, nn, widgets

matplotlib.use("Agg")

DIGIT = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)


def shown_png(widget):
    assert widget.plot.format == "png"
    return widget.plot.value


def figure_png(widget):
    buffer = io.BytesIO()
    widget.figure().savefig(buffer, format="png")
    return buffer.getvalue()


def windows(fig):
    """(x, y, width, height) of the field rectangles drawn on the first axes."""
    return [(p.get_x(), p.get_y(), p.get_width(), p.get_height())
            for p in fig.axes[0].patches if isinstance(p, Rectangle)]


def test_explorer_shows_two_3x3_at_construction():
    w = widgets.receptive_field_explorer(DIGIT)
    assert [r.size for r in w.rows] == [3, 5] and w.message.value == ""
    assert (w.u.max, w.u.value, w.v.value) == (23, 12, 12)  # 24×24 output, the centre unit
    assert "<td" in w.table.value and ">18<" in w.table.value  # 9 + 9 kernel weights
    assert shown_png(w) == figure_png(w)  # the widget's picture is the static figure
    # unit (12, 12) sees rows and columns 12…16: dashed (unclipped) and filled (clipped) boxes
    assert windows(w.figure()) == [(11.5, 11.5, 5, 5)] * 2
    assert "is not in shendu" not in w.table.value


def test_explorer_controls_redraw():
    w = widgets.receptive_field_explorer(DIGIT)
    before = shown_png(w)
    w.kernel.value = 5  # the selected (last) layer becomes 5×5: field 7, output 22×22
    assert w.specs[-1]["kernel_size"] == 5 and [r.size for r in w.rows] == [3, 7]
    assert (w.u.max, w.u.value) == (21, 12)
    assert ">7<" in w.table.value and shown_png(w) != before
    w.u.value, w.v.value = 0, 21
    assert windows(w.figure()) == [(20.5, -0.5, 7, 7)] * 2  # rows 0…6, columns 21…27
    assert shown_png(w) == figure_png(w)
    w.stride.value = 2  # (26 − 5) % 2: the stride does not fit, a note but still a stack
    assert w.rows[-1].out_size == 11 and "never seen" in w.table.value
    assert w.u.max == 10 and w.v.value == 10  # the unit stays inside the smaller map


def test_explorer_adds_and_removes_layers():
    w = widgets.receptive_field_explorer(DIGIT, preset="one 7×7")
    assert w.remove.disabled  # the last layer cannot go
    w.kernel.value = 3
    w.add.click()
    w.add.click()
    assert len(w.specs) == 3 and w.layer.value == 2 and not w.remove.disabled
    assert [r.size for r in w.rows] == [3, 5, 7]
    assert sum(r.kernel_weights for r in w.rows) == 27
    w.layer.value = 0  # select the first layer and pool with it
    w.kind.value = "maxpool"
    w.stride.value = 2
    assert w.out_channels.disabled and w.specs[0]["out_channels"] is None
    assert [(r.size, r.stride) for r in w.rows] == [(3, 2), (7, 2), (11, 2)]
    w.remove.click()
    assert [r.layer.kind for r in w.rows] == ["conv", "conv"] and w.layer.value == 0
    assert [label for label, _ in w.layer.options] == ["1: conv 3×3 → 1", "2: conv 3×3 → 1"]


def test_explorer_presets():
    w = widgets.receptive_field_explorer(DIGIT)
    w.preset.value = "DeepConvNet"
    assert len(w.specs) == 9 and (w.size.value, w.channels.value) == (28, 1)
    assert (w.rows[-1].size, w.rows[-1].stride, w.u.max, w.u.value) == (36, 8, 3, 2)
    assert ">71,792<" in w.table.value  # the six convolutions: 123,552 − 51,250 − 510 (affine)
    assert shown_png(w) == figure_png(w)


def test_explorer_explains_invalid_stacks():
    w = widgets.receptive_field_explorer(DIGIT, preset="three 3×3")
    w.padding.value = 3
    assert "padding 3 is not smaller than the 3×3 window" in w.message.value
    assert w.table.value == "" and w.rows == []
    assert "(invalid)" in w.layer.options[-1][0]
    fig = w.figure()
    assert "padding 3" in fig.axes[1].texts[0].get_text() and windows(fig) == []
    w.padding.value = 0
    w.size.value = 6  # three 3×3 on 6×6: 4, 2, then nothing
    assert "layer 3 (conv 3×3 → 1) gets a 2×2 input" in w.message.value
    w.size.value = 7
    assert w.message.value == "" and w.rows[-1].out_size == 1 and w.u.max == 0
    assert shown_png(w) == figure_png(w)


def test_parameter_explorer():
    w = widgets.parameter_explorer()
    # one 7×7: 49·64² + 64 weights; three 3×3: 3·(9·64² + 64)
    assert ">200,768<" in w.table.value and ">110,784<" in w.table.value
    assert "55% of the weights" in w.table.value  # 27 / 49
    w.kernel.value = 5
    assert ">102,464<" in w.table.value and ">73,856<" in w.table.value  # 25·64² + 64, 2·(…)
    weights_axes = w.figure().axes[0]
    one, stacked = (line.get_ydata() for line in weights_axes.get_lines()[:2])
    assert list(one) == [9 * 4096 + 64, 25 * 4096 + 64, 49 * 4096 + 64, 81 * 4096 + 64,
                         121 * 4096 + 64]
    assert list(stacked) == [n * (9 * 4096 + 64) for n in range(1, 6)]
    assert shown_png(w) == figure_png(w)


def test_effective_field_viewer():
    layer = nn.Conv2d(1, 2, 3, padding=1)
    w3 = np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3) - 9
    layer.load_state_dict({"weight": w3, "bias": np.zeros(2, np.float32)})
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(2 * 28 * 28, 10))
    w = widgets.effective_field_viewer(model, DIGIT)
    # the default unit: the centre of the channel most active there (1: its weights are ≥ 0)
    assert (w.c.max, w.u.max, w.u.value, w.c.value) == (1, 27, 14, 1)
    image = w.figure().axes[1].images[0].get_array()
    expected = np.zeros((28, 28), np.float32)
    expected[13:16, 13:16] = np.abs(w3[1, 0])
    np.testing.assert_allclose(image, expected)
    w.c.value, w.u.value = 0, 0
    assert w.result.unit == (0, 0, 14)
    fig = w.figure()
    assert fig.axes[1].images[0].get_array()[0, 13:16].tolist() == np.abs(w3[0, 0, 1]).tolist()
    assert windows(fig)[0] == (12.5, -1.5, 3, 3)  # rows −1…1, columns 13…15
    assert shown_png(w) == figure_png(w)


def test_effective_field_viewer_on_deepconvnet_notes_silent_units():
    shendu.manual_seed(0)
    w = widgets.effective_field_viewer(models.get("deepconvnet"), DIGIT)
    assert (w.c.max, w.u.max) == (63, 3)
    for c in range(8):
        w.c.value = c
        fig = w.figure()
        assert fig.axes[0].get_title() == f"theoretical field of unit ({c}, 2, 2): 36×36"
        silent = "no gradient reaches the image" in fig.axes[1].get_title()
        assert silent == (not w.result.gradient.any()) == (w.result.activation == 0)


def test_import_shendu_does_not_import_widgets():
    import subprocess
    import sys
    code = "import sys, shendu; print('shendu.widgets' in sys.modules, 'ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("make", [widgets.receptive_field_explorer, widgets.parameter_explorer])
def test_only_the_ipywidgets_7_api(make):
    # Colab ships ipywidgets 7.7: the widgets are built from controls that exist there
    def kinds(widget):
        yield type(widget).__name__
        for child in getattr(widget, "children", ()):
            yield from kinds(child)
    first, *rest = kinds(make())
    assert set(rest) <= {"IntSlider", "Dropdown", "Button", "HBox", "VBox", "HTML", "Image"}


DIGITS = np.zeros((30, 1, 12, 12), np.uint8)
DIGITS[:, 0, 3:9, 5:7] = 255  # a bar: every transform visibly moves it


def test_augmentation_explorer_starts_as_the_identity_and_draws_at_construction():
    w = widgets.augmentation_explorer(DIGITS)
    x = DIGITS.astype(np.float32) / 255
    np.testing.assert_array_equal(w.transform()(x, np.random.default_rng(0)), x)
    assert shown_png(w) == figure_png(w)
    fig = w.figure()
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 18  # six originals over two rows of copies
    for copy in shown[6:]:
        np.testing.assert_array_equal(copy, x[0, 0])


def test_augmentation_sliders_build_the_transform_and_redraw():
    w = widgets.augmentation_explorer(DIGITS, rotation=30)
    assert "Compose([RandomAffine(degrees=(-30.0, 30.0))])" in w.described.value
    before = shown_png(w)
    w.sliders["erasing"].value = 50
    w.sliders["elastic"].value = 10
    names = [type(t).__name__ for t in w.transform().transforms]
    assert names == ["RandomAffine", "ElasticDistortion", "RandomErasing"]
    assert "RandomErasing(p=0.5" in w.described.value and shown_png(w) != before
    copies = [ax.images[0].get_array() for ax in w.figure().axes if ax.images][6:]
    assert all(not np.array_equal(c, DIGITS[0, 0] / 255) for c in copies)


def test_augmentation_new_draw_and_batch_mode():
    w = widgets.augmentation_explorer(DIGITS, shift=3)
    first = shown_png(w)
    w.again.click()
    assert w.draw == 1 and shown_png(w) != first
    w.mode.value = "what the model sees"
    assert len([ax for ax in w.figure().axes if ax.images]) == 24


@pytest.mark.parametrize("images, strengths", [(DIGITS[:, 0], {}), (DIGITS, {"blur": 3})])
def test_augmentation_explorer_refuses_bad_input(images, strengths):
    with pytest.raises(shendu.ShenduError):
        widgets.augmentation_explorer(images, **strengths)
