"""The chapter's widgets in Python: the explorers' state (what their page module draws from)
and what they compute with shendu.receptive and shendu.augment; the effective-field viewer's
picture. What the explorers' pages do with it is tested in a browser: tests/test_explorers.py."""
import base64
import io
import json
from pathlib import Path

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


def test_explorer_starts_with_two_3x3_and_the_centre_unit():
    w = widgets.receptive_field_explorer(DIGIT)
    assert w.explorer == "receptive" and w.preset == "two 3×3" and w.problem == ""
    assert [r.size for r in w.rows] == [3, 5] and w.selected == 1
    assert w.unit == [12, 12]  # 24×24 output, the centre unit
    assert sum(r.kernel_weights for r in w.rows) == 18  # 9 + 9
    assert w.image == {"size": 28, "pixels": DIGIT.ravel().tolist()}


def test_explorer_page_module_and_state():
    """The page gets its module and everything it draws from in the widget's state (the web
    book has no kernel to ask): every preset, the image, JSON all through."""
    w = widgets.receptive_field_explorer(DIGIT)
    state = w.get_state()
    assert state["_esm"] == (Path(widgets.__file__).parent / "explorers.js").read_text()
    assert state["_model_module"] == "anywidget"
    assert set(state["presets"]) == {"one 5×5", "two 3×3", "one 7×7", "three 3×3",
                                     "DeepConvNet", "VGG16", "ResNet-50"}
    assert json.loads(json.dumps(state["presets"])) == state["presets"]
    vgg = state["presets"]["VGG16"]
    assert (vgg["input_size"], vgg["in_channels"], len(vgg["layers"])) == (224, 3, 18)
    assert vgg["layers"][0] == {"kind": "conv", "kernel_size": 3, "stride": 1, "padding": 1,
                                "dilation": 1, "out_channels": 64, "bias": True}


def test_explorer_loads_presets():
    w = widgets.receptive_field_explorer(DIGIT)
    w.load("DeepConvNet")
    assert len(w.layers) == 9 and (w.input_size, w.in_channels) == (28, 1)
    assert (w.rows[-1].size, w.rows[-1].stride, w.rows[-1].out_size, w.unit) == (36, 8, 4, [2, 2])
    # the six convolutions: 123,552 weights in all − 51,250 − 510 (the two affine layers)
    assert sum(r.weights for r in w.rows) == 71_792
    with pytest.raises(shendu.ShenduError, match="unknown preset 'VGG19'"):
        w.load("VGG19")


def test_explorer_explains_invalid_stacks():
    w = widgets.receptive_field_explorer(DIGIT, preset="three 3×3")
    w.layers = [*w.layers[:2], {**w.layers[2], "padding": 3}]
    assert "padding 3 is not smaller than the 3×3 window" in w.problem and w.rows == []
    w.layers = [{**spec, "padding": 0} for spec in w.layers]
    w.input_size = 6  # three 3×3 on 6×6: 4, 2, then nothing
    assert w.problem.startswith("layer 3 (conv 3×3 → 1) gets a 2×2 input")
    w.input_size = 7
    assert w.problem == "" and w.rows[-1].out_size == 1


def test_explorer_image_forms():
    gray = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 15  # floats in [0, 1]
    w = widgets.receptive_field_explorer(np.repeat(gray, 3, axis=1))  # channels averaged
    assert w.image == {"size": 4, "pixels": [round(v * 17) for v in range(16)]}
    assert widgets.receptive_field_explorer().image["pixels"] == [0] * 784
    with pytest.raises(shendu.ShenduError, match="one square image"):
        widgets.receptive_field_explorer(np.zeros((28, 20)))


def test_parameter_explorer():
    w = widgets.parameter_explorer()
    big, stack = w.rows
    # one 7×7: 49·64² + 64 weights; three 3×3: 3·(9·64² + 64)
    assert (big["weights"], stack["weights"]) == (200_768, 110_784)
    assert (big["macs"], stack["macs"]) == (49 * 64 * 64 * 784, 27 * 64 * 64 * 784)
    w.kernel_size = 5
    assert [r["weights"] for r in w.rows] == [102_464, 73_856]  # 25·64² + 64, 2·(9·64² + 64)
    with pytest.raises(shendu.ShenduError, match="must be odd"):
        widgets.parameter_explorer(kernel_size=6)


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


DIGITS = np.zeros((30, 1, 12, 12), np.uint8)
DIGITS[:, 0, 3:9, 5:7] = 255  # a bar: every transform visibly moves it


def test_augmentation_explorer_starts_as_the_identity():
    w = widgets.augmentation_explorer(DIGITS)
    x = DIGITS.astype(np.float32) / 255
    np.testing.assert_array_equal(w.transform()(x, np.random.default_rng(0)), x)
    assert w.explorer == "augmentation" and set(w.strengths.values()) == {0}
    shipped = np.frombuffer(base64.b64decode(w.images["pixels"]), np.uint8)
    np.testing.assert_array_equal(shipped.reshape(30, 12, 12), DIGITS[:, 0])
    assert (w.images["n"], w.images["h"], w.images["w"]) == (30, 12, 12)


def test_augmentation_explorer_ships_gray_levels_of_at_most_256_images():
    floats = np.random.default_rng(0).random((300, 1, 5, 5)).astype(np.float32)
    w = widgets.augmentation_explorer(floats)
    shipped = np.frombuffer(base64.b64decode(w.images["pixels"]), np.uint8)
    np.testing.assert_array_equal(shipped, np.round(floats[:256] * 255).ravel())


def test_augmentation_strengths_build_the_transform():
    w = widgets.augmentation_explorer(DIGITS, rotation=30)
    assert repr(w.transform()) == "Compose([RandomAffine(degrees=(-30.0, 30.0))])"
    w.strengths = {**w.strengths, "erasing": 50, "elastic": 10, "shift": 3}
    steps = w.transform().transforms
    assert [type(t).__name__ for t in steps] == ["RandomAffine", "ElasticDistortion",
                                                 "RandomErasing"]
    assert steps[0].translate == (3 / 12, 3 / 12) and steps[2].p == 0.5
    x = DIGITS.astype(np.float32) / 255
    assert not np.array_equal(w.transform()(x, np.random.default_rng(0)), x)


@pytest.mark.parametrize("images, strengths", [(DIGITS[:, 0], {}), (DIGITS, {"blur": 3})])
def test_augmentation_explorer_refuses_bad_input(images, strengths):
    with pytest.raises(shendu.ShenduError):
        widgets.augmentation_explorer(images, **strengths)
