"""Receptive fields: the arithmetic against hand-computed stacks, stacks read from models, the
summary's field column, and the effective field measured by shendu's own backward pass."""
import numpy as np
import pytest

import shendu
from shendu import ShenduError, models, nn
from shendu import receptive as rf
from shendu.receptive import Layer


def conv(k, **kw):
    return Layer("conv", k, **kw)


def test_two_3x3_see_5x5_with_18_weights_three_see_7x7_with_27():
    for name, size, weights in (("one 5×5", 5, 25), ("two 3×3", 5, 18),
                                ("one 7×7", 7, 49), ("three 3×3", 7, 27)):
        stack = rf.preset(name)
        rows = rf.fields(stack.layers, stack.input_size, stack.in_channels)
        assert rows[-1].size == size, name
        assert sum(r.kernel_weights for r in rows) == weights, name  # per channel pair
        assert sum(r.weights for r in rows) == weights + len(rows), name  # one bias per layer


def test_param_comparison_counts_by_hand():
    big, stack = rf.param_comparison(64, 7, size=28)
    assert big == {"stack": "one 7×7", "layers": 1, "field": 7,
                   "weights": 49 * 64 * 64 + 64, "kernel_weights": 49 * 64 * 64,
                   "macs": 28 * 28 * 64 * 64 * 49}  # "same" padding: 28×28 outputs
    assert stack == {"stack": "three 3×3", "layers": 3, "field": 7,
                     "weights": 3 * (9 * 64 * 64 + 64), "kernel_weights": 3 * 9 * 64 * 64,
                     "macs": 3 * 28 * 28 * 64 * 64 * 9}
    one, two = rf.param_comparison(1, 5)
    assert (one["kernel_weights"], two["kernel_weights"]) == (25, 18)
    for bad in (4, 1, 3.0):
        with pytest.raises(ShenduError, match="kernel_size"):
            rf.param_comparison(8, bad)


def test_a_strided_stack_by_hand():
    # r_l = r_{l-1} + (k_l - 1) j_{l-1},  j_l = j_{l-1} s_l,  P_l = P_{l-1} + p_l j_{l-1}
    # conv 3 (s 1, p 0): r 3, j 1, P 0, out 28 - 3 + 1 = 26
    # conv 3 (s 2, p 1): r 3 + 2·1 = 5, j 2, P 0 + 1·1 = 1, out (26 + 2 - 3) // 2 + 1 = 13;
    #                    25 % 2 = 1: the last padded row is never seen
    # maxpool 2 (s 2):   r 5 + 1·2 = 7, j 4, P 1, out (13 - 2) // 2 + 1 = 6; 11 % 2: again
    rows = rf.fields([conv(3), conv(3, stride=2, padding=1), Layer("maxpool", 2, stride=2)])
    assert [(r.out_size, r.size, r.stride, r.padding) for r in rows] == \
        [(26, 3, 1, 0), (13, 5, 2, 1), (6, 7, 4, 1)]
    assert [bool(r.note) for r in rows] == [False, True, True]
    assert "the last 1 row(s) and column(s) of the padded 28×28 input" in rows[1].note
    # unit 5 of the pool spans 5·4 − 1 … 5·4 − 1 + 6 = 19 … 25; its centre 22 = start + 5·4
    assert rows[2].window(5, 0) == ((19, 25), (-1, 5))
    assert rows[2].start == 2.0


def test_dilation_spreads_the_kernel():
    assert [conv(3, dilation=a).span for a in (1, 2, 4)] == [3, 5, 9]  # α(k − 1) + 1
    # 3×3 kernels dilated 1, 2, 4: r = 1 + 2 + 4 + 8 = 15 with 27 weights; outputs 26, 22, 14
    rows = rf.fields([conv(3), conv(3, dilation=2), conv(3, dilation=4)])
    assert [(r.size, r.out_size) for r in rows] == [(3, 26), (7, 22), (15, 14)]
    assert sum(r.kernel_weights for r in rows) == 27


# DeepConvNet by hand (28×28 input), layer: r, j, P, output size
#   conv 3 p1: 1 + 2·1 = 3, 1, 1, 28      conv 3 p1: 5, 1, 2, 28      pool 2/2: 6, 2, 2, 14
#   conv 3 p1: 6 + 2·2 = 10, 2, 4, 14     conv 3 p2: 14, 2, 8, 16     pool 2/2: 16, 4, 8, 8
#   conv 3 p1: 16 + 2·4 = 24, 4, 12, 8    conv 3 p1: 32, 4, 16, 8     pool 2/2: 36, 8, 16, 4
DEEPCONVNET = [(3, 1, 1, 28), (5, 1, 2, 28), (6, 2, 2, 14), (10, 2, 4, 14), (14, 2, 8, 16),
               (16, 4, 8, 8), (24, 4, 12, 8), (32, 4, 16, 8), (36, 8, 16, 4)]


def test_deepconvnet_field_per_layer():
    stack = rf.stack_of(models.get("deepconvnet"))
    pool = Layer("maxpool", 2, stride=2)
    assert stack == [conv(3, padding=1, out_channels=16, in_channels=1),
                     conv(3, padding=1, out_channels=16, in_channels=16), pool,
                     conv(3, padding=1, out_channels=32, in_channels=16),
                     conv(3, padding=2, out_channels=32, in_channels=32), pool,
                     conv(3, padding=1, out_channels=64, in_channels=32),
                     conv(3, padding=1, out_channels=64, in_channels=64), pool]
    rows = rf.fields(stack)
    assert [(r.size, r.stride, r.padding, r.out_size) for r in rows] == DEEPCONVNET
    assert not any(r.note for r in rows)
    assert rows[0].weights == 16 * 9 + 16 and rows[0].macs == 28 * 28 * 16 * 9
    assert rows[4].macs == 16 * 16 * 32 * 32 * 9  # the conv padding 2 outputs 16×16


def test_the_window_of_a_unit():
    last = rf.fields(rf.stack_of(models.get("deepconvnet")))[-1]
    # unit u spans u·8 − 16 … u·8 − 16 + 35
    assert last.window(0, 0) == ((-16, 19), (-16, 19))
    assert last.clipped(0, 0) == ((0, 19), (0, 19))
    assert last.window(3, 1) == ((8, 43), (-8, 27))
    assert last.clipped(3, 1) == ((8, 27), (0, 27))
    assert last.start == 1.5  # centre of unit u: 8u + 1.5
    for u, v in ((4, 0), (0, -1), (1.0, 0)):
        with pytest.raises(ShenduError, match="outside layer 9's 4×4 output"):
            last.window(u, v)


@pytest.mark.parametrize("make, message", [
    (lambda: rf.fields([conv(5)] * 7), r"layer 7 \(conv 5×5\) gets a 4×4 input, smaller than"),
    (lambda: rf.fields([conv(3, stride=2)] * 5, input_size=16), "layer 4 .* 1×1 input"),
    (lambda: conv(3, padding=3), "padding 3 is not smaller than the 3×3 window"),
    (lambda: conv(3, dilation=2, padding=5), "padding 5 is not smaller than the 5×5 window"),
    (lambda: Layer("pool", 2), "kind must be one of conv, maxpool, avgpool"),
    (lambda: Layer("maxpool", 2, out_channels=8), "keeps its channels"),
    (lambda: conv(0), "kernel_size must be an integer of at least 1"),
    (lambda: conv(3, stride=1.5), "stride must be an integer"),
    (lambda: rf.fields([(3, 1)]), "layer 1 must be a receptive.Layer"),
    (lambda: rf.fields([conv(3)], input_size=0), "input_size"),
    (lambda: rf.stack_of(nn.Sequential(nn.Conv2d(1, 2, 3), models.PadShortcut(2, 1),
                                       _Odd())), "_Odd: its receptive field is unknown"),
    (lambda: rf.preset("LeNet"), "unknown preset 'LeNet'"),
])
def test_invalid_stacks_are_explained(make, message):
    with pytest.raises(ShenduError, match=message):
        make()


class _Odd(nn.Module):
    def forward(self, x):
        return x


def test_graph_blocks_follow_the_widest_branch():
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    wide_shortcut = nn.Residual(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 5, padding=2))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Residual(body), wide_shortcut,
                          nn.Concat(nn.Conv2d(4, 2, 1), nn.Sequential(nn.MaxPool2d(3, 1, 1),
                                                                      nn.Conv2d(4, 2, 3))),
                          nn.Conv2d(4, 8, 3), nn.GlobalAvgPool2d(), nn.Linear(8, 2))
    stack = rf.stack_of(model)
    assert [(layer.kind, layer.kernel_size) for layer in stack] == [
        ("conv", 3), ("conv", 3), ("conv", 3), ("conv", 5), ("maxpool", 3), ("conv", 3),
        ("conv", 3)]
    rows = rf.fields(stack, 16)
    # 3, +2, +2 (body), +4 (the 5×5 shortcut beats the 1×1 body), +2 +2 (pool, conv), +2
    assert [r.size for r in rows] == [3, 5, 7, 11, 13, 15, 17]
    # after the Concat the conv reads both branches' 2 + 2 channels, not the last branch's 2
    assert (rows[-1].in_channels, rows[-1].kernel_weights) == (4, 4 * 8 * 9)


def test_pad_shortcut_subsamples():
    assert rf.layer_of(models.PadShortcut(2, 8)) == Layer("maxpool", 1, stride=2)


def test_model_presets():
    # by hand, VGG16 (3×3 p1 convs, 2×2/2 pools): blocks of 2, 2, 3, 3, 3 convs, each then a pool
    #   r: 5, 6 | 6 + 2·2·2 = 14, 16 | 16 + 3·2·4 = 40, 44 | 44 + 3·2·8 = 92, 100 |
    #      100 + 3·2·16 = 196, 212; j = 32, output 224 / 32 = 7
    # ResNet-50 as torchvision (stride on the 3×3): stem 7/2 → r 7, j 2; pool 3/2 → 11, j 4;
    #   stage 1, 3 blocks: + 3·2·4 = 35; stage 2: + 2·4 (strided 3×3) = 43, j 8, + 3·2·8 = 91;
    #   stage 3: + 2·8 = 107, j 16, + 5·2·16 = 267; stage 4: + 2·16 = 299, j 32, + 2·2·32 = 427
    for name, size, n_layers in (("VGG16", 212, 18), ("ResNet-50", 427, 50)):
        try:
            stack = rf.preset(name)
        except ShenduError as error:
            pytest.skip(f"{name} is not in shendu.models yet: {error}")
        rows = rf.fields(stack.layers, stack.input_size, stack.in_channels)
        assert (len(rows), rows[-1].size, rows[-1].stride, rows[-1].out_size) == \
            (n_layers, size, 32, 7), name
    assert rf.preset("DeepConvNet").layers == tuple(rf.stack_of(models.get("deepconvnet")))


# -- the summary's field column and its graph blocks ------------------------------------------
def test_summary_field_column_of_deepconvnet():
    table = shendu.summary(models.get("deepconvnet"))
    convs_and_pools = [f for row, f in zip(table, table.fields)
                       if row["type"] in ("ConvReLU2d", "MaxPool2d")]
    assert convs_and_pools == [(r, j) for r, j, _, _ in DEEPCONVNET]
    assert table.fields[1] == (3, 1)  # the fused ReLU's Identity keeps the field
    assert table.fields[15:] == [None] * 6  # Flatten on: no feature map
    assert "36x36 /8" in str(table) and table.total_parameters == 123552


def test_summary_opens_residual_and_concat():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())),
        nn.Residual(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(8, 16, 1, stride=2)),
        nn.Concat(nn.Conv2d(16, 4, 1), nn.Conv2d(16, 4, 5, padding=2)),
        nn.GlobalAvgPool2d(), nn.Linear(8, 3))
    table = shendu.summary(model, (1, 16, 16))
    assert [(r["name"], r["type"], r["output_shape"], r["parameters"]) for r in table] == [
        ("0", "Conv2d", (8, 16, 16), 80),
        ("1.body.0", "Conv2d", (8, 16, 16), 584), ("1.body.1", "ReLU", (8, 16, 16), 0),
        ("1", "Residual", (8, 16, 16), 0),
        ("2.body", "Conv2d", (16, 8, 8), 1168), ("2.shortcut", "Conv2d", (16, 8, 8), 144),
        ("2", "Residual", (16, 8, 8), 0),
        ("3.0", "Conv2d", (4, 8, 8), 68), ("3.1", "Conv2d", (4, 8, 8), 1604),
        ("3", "Concat", (8, 8, 8), 0),
        ("4", "GlobalAvgPool2d", (8,), 0), ("5", "Linear", (3,), 27)]
    # fields: 3; 5 (body), 5 (sum); 7/2 (body), 5/2 (the 1×1 shortcut adds nothing), 7/2 (the
    # wider); 7/2 (1×1 branch), 7 + 4·2 = 15/2 (5×5 branch), 15/2 (concatenation)
    assert table.fields == [(3, 1), (5, 1), (5, 1), (5, 1), (7, 2), (5, 2), (7, 2),
                            (7, 2), (15, 2), (15, 2), None, None]
    assert table.total_parameters == model.num_parameters()
    assert table.total_macs == (16 * 16 * 8 * 9 + 16 * 16 * 8 * 72 + 8 * 8 * 16 * 72
                                + 8 * 8 * 16 * 8 + 8 * 8 * 4 * 16 + 8 * 8 * 4 * 16 * 25 + 24)


# -- the effective receptive field ------------------------------------------------------------
def test_effective_field_of_one_convolution_is_its_kernel():
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(1, 2, 3, padding=1)
    w = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)
    layer.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)})
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(2 * 10 * 10, 2))
    image = rng.random((10, 10), np.float32)
    # y[c, u, v] = Σ_ab w[c, 0, a, b] x[u + a − 1, v + b − 1]: ∂y/∂x is w placed at the window
    result = rf.effective_field(model, image, unit=(1, 5, 7))
    expected = np.zeros((10, 10), np.float32)
    expected[4:7, 6:9] = np.abs(w[1, 0])
    np.testing.assert_allclose(result.gradient, expected, rtol=1e-6)
    assert result.window == ((4, 6), (6, 8))
    # a corner unit: the window reaches into the padding, only the kernel's inner part touches x
    corner = rf.effective_field(model, image, unit=(0, 0, 0))
    expected = np.zeros((10, 10), np.float32)
    expected[:2, :2] = np.abs(w[0, 0, 1:, 1:])
    np.testing.assert_allclose(corner.gradient, expected, rtol=1e-6)
    assert (corner.window, corner.clipped) == (((-1, 1), (-1, 1)), ((0, 1), (0, 1)))


def test_effective_field_of_deepconvnet_stays_inside_the_theoretical_field():
    shendu.manual_seed(0)
    model = models.get("deepconvnet")
    image = (np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)
    results = [rf.effective_field(model, image, unit=(c, 3, 1)) for c in range(8)]
    alive = [r for r in results if r.activation > 0]
    assert alive, "no unit of 8 is active: pick another image"
    for result in results:
        (top, bottom), (left, right) = result.clipped
        assert (top, bottom, left, right) == (8, 27, 0, 27)  # by hand above: rows 8…43, cols −8…27
        outside = result.gradient.copy()
        outside[top:bottom + 1, left:right + 1] = 0
        assert not outside.any()
        assert result.gradient.any() == (result.activation > 0)  # max pool of ReLUs: 0 ⇒ no path
    assert model.training  # the mode is restored


def test_effective_field_explains_mistakes():
    model = models.get("deepconvnet")
    image = np.zeros((28, 28), np.uint8)
    for kwargs, message in (({"unit": (0, 4, 0)}, "outside layer 9's 4×4"),
                            ({"unit": (64, 0, 0)}, "channel c=64 is outside the 64"),
                            ({"unit": (0, 0)}, "unit must be"),
                            ({"depth": 16}, "not feature maps")):
        with pytest.raises(ShenduError, match=message):
            rf.effective_field(model, image, **kwargs)
    with pytest.raises(ShenduError, match="one square image"):
        rf.effective_field(model, np.zeros((2, 1, 28, 28)))
    with pytest.raises(ShenduError, match="needs a Sequential"):
        rf.effective_field(nn.Conv2d(1, 1, 3), image)


def test_default_unit_is_the_most_active_channel_at_the_centre():
    shendu.manual_seed(0)
    model = shendu.models.DeepConvNet()
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    result = rf.effective_field(model, image)
    with shendu.nn.no_grad():
        maps = nn.Sequential(*list(model)[:15])(image[None, None])
    assert result.unit == (int(maps[0, :, 2, 2].argmax()), 2, 2)
    assert result.activation == maps[0, :, 2, 2].max() > 0 and result.gradient.any()
