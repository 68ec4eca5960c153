"""Every layer's backward against numerical gradients (float64); test_torch_layers.py checks
every layer against PyTorch."""
import numpy as np
import pytest

import shendu
from gradcheck import check_module_gradients, numerical_grad, rand, rel_error
from shendu import nn


# (constructor, input shape) — odd sizes, strides and paddings on purpose
LAYERS = [
    (lambda: nn.Linear(7, 5), (4, 7)),
    (lambda: nn.Linear(3, 2, bias=False), (5, 3)),
    (lambda: nn.Conv2d(3, 4, 3), (2, 3, 7, 6)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 9, 8)),
    (lambda: nn.Conv2d(3, 2, 5, stride=3, padding=2, bias=False), (1, 3, 11, 10)),
    (lambda: nn.Conv2d(2, 2, 3, padding=2), (2, 2, 5, 4)),
    (lambda: nn.Conv2d(4, 3, 1), (2, 4, 3, 5)),
    (lambda: nn.ConvReLU2d(nn.Conv2d(2, 3, 3, stride=2, padding=1)), (2, 2, 7, 6)),
    (lambda: nn.ConvTranspose2d(3, 2, 3), (2, 3, 4, 5)),
    (lambda: nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1), (2, 2, 3, 4)),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=3, padding=2, output_padding=2, bias=False),
     (1, 2, 3, 2)),
    (lambda: nn.MaxPool2d(2), (2, 3, 6, 6)),
    (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 5)),
    (lambda: nn.MaxPool2d(2, stride=1), (1, 2, 5, 5)),
    (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 7, 5)),
    (lambda: nn.GlobalAvgPool2d(), (2, 3, 4, 5)),
    (lambda: nn.Upsample(2), (2, 3, 3, 4)),
    (lambda: nn.Upsample(3, mode="bilinear"), (2, 2, 4, 3)),
    (lambda: nn.Flatten(), (2, 3, 4, 5)),
    (lambda: nn.ReLU(), (3, 4, 5)),
    (lambda: nn.LeakyReLU(0.2), (2, 3, 4, 5)),
    (lambda: nn.Identity(), (3, 4, 5)),
    (lambda: nn.Sigmoid(), (3, 7)),
    (lambda: nn.Tanh(), (3, 7)),
    (lambda: nn.Dropout(0.3), (6, 9)),
    (lambda: nn.BatchNorm1d(5), (8, 5)),
    (lambda: nn.BatchNorm2d(3), (4, 3, 5, 3)),
    (lambda: nn.BatchNormReLU2d(nn.BatchNorm2d(3)), (4, 3, 5, 3)),
]
IDS = [f"{make()!r}-{shape}" for make, shape in LAYERS]


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_gradients_match_numerical_differentiation(make, shape):
    shendu.manual_seed(0)
    layer = make()
    for p in layer.parameters():  # non-trivial γ, β and biases
        p.data = p.data + 0.3 * rand(*p.shape, seed=7).astype(p.data.dtype)
    check_module_gradients(layer, rand(*shape))


def test_batchnorm_gradients_in_eval_mode():
    layer = nn.BatchNorm2d(3)
    layer.running_mean = rand(3, seed=1).astype(np.float32)
    layer.running_var = (1 + rand(3, seed=2) ** 2).astype(np.float32)
    layer.eval()  # differentiable in eval mode, as in PyTorch
    check_module_gradients(layer, rand(2, 3, 4, 4))


def test_deep_conv_net_gradients():
    shendu.manual_seed(0)
    model = shendu.models.DeepConvNet(input_shape=(1, 12, 12), dropout=0.2)
    for p in model.parameters():  # zero biases put the pad-2 corners exactly on ReLU's kink
        p.data = p.data + 0.1 * rand(*p.shape, seed=7).astype(np.float32)
    check_module_gradients(model, rand(2, 1, 12, 12), samples=40)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gradient(smoothing):
    z = rand(5, 7)
    t = np.array([0, 3, 6, 2, 2])
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    loss(z, t)
    analytic = loss.backward()
    assert rel_error(analytic, numerical_grad(lambda: loss(z, t), z)) < 1e-6


def test_cross_entropy_per_pixel_gradient_ignores_padding():
    z, t = rand(2, 4, 3, 3), np.arange(18).reshape(2, 3, 3) % 4
    t[0, 1, :] = -100
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss(z, t)
    analytic = loss.backward()
    assert rel_error(analytic, numerical_grad(lambda: loss(z, t), z)) < 1e-6
    assert not analytic[0, :, 1, :].any()


@pytest.mark.parametrize("loss", [nn.BCEWithLogitsLoss(), nn.HuberLoss(),
                                  nn.HuberLoss(delta=0.3)], ids=["bce", "huber", "huber-0.3"])
def test_elementwise_loss_gradients(loss):
    z, y = 2 * rand(4, 6), rand(4, 6, seed=1) ** 2  # targets in [0, 1]; errors on both sides
    loss(z, y)
    analytic = loss.backward()
    assert rel_error(analytic, numerical_grad(lambda: loss(z, y), z)) < 1e-6


def test_huber_is_half_the_squared_error_near_and_linear_far():
    loss = nn.HuberLoss(delta=1.0)
    assert loss(np.array([0.5, -3.0]), np.zeros(2)) == pytest.approx((0.125 + 2.5) / 2)
    np.testing.assert_allclose(loss.backward(), [0.25, -0.5])  # clip(d, -1, 1) / N


def test_bce_is_stable_for_huge_logits():
    loss = nn.BCEWithLogitsLoss()
    value = loss(np.array([1e4, -1e4], np.float32), np.array([0.0, 0.0]))
    assert np.isclose(value, 1e4 / 2)
    np.testing.assert_allclose(loss.backward(), [0.5, 0.0])


def test_cross_entropy_is_stable_for_huge_logits():
    loss = nn.CrossEntropyLoss()
    value = loss(np.array([[1e4, 0.0, -1e4]], np.float32), np.array([1]))
    assert np.isclose(value, 1e4)
    assert np.isfinite(loss.backward()).all()


def test_dropout_matches_pytorch_semantics():
    layer = nn.Dropout(0.5)
    x = np.ones((200, 100), np.float32)
    y = layer(x)
    assert set(np.unique(y)) == {0.0, 2.0}  # inverted: survivors scaled by 1 / (1 - p)
    assert abs((y == 0).mean() - 0.5) < 0.02
    np.testing.assert_array_equal(layer.backward(x), y)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)


def test_skipping_the_input_gradient_keeps_parameter_gradients():
    shendu.manual_seed(0)
    model = shendu.models.DeepConvNet(dropout=0.0)
    x = np.random.default_rng(0).random((3, 1, 28, 28), np.float32)
    dy = rand(3, 10, seed=1).astype(np.float32)
    model(x)
    assert model.backward(dy).shape == x.shape
    full = {name: p.grad.copy() for name, p in model.named_parameters()}
    model(x)
    assert model.backward(dy, input_grad=False) is None
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, full[name])


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_bilinear_transposed_convolution_keeps_ramps_and_constants(stride):
    """Bilinear interpolation reproduces any affine image a + b·row + c·column exactly (in the
    coordinates of pixel centres), so away from the border the upsampled ramp is that ramp at
    the output's pixel centres, (i + 1/2) / stride − 1/2."""
    layer = nn.init.bilinear_(nn.ConvTranspose2d(2, 2, 2 * stride - stride % 2, stride=stride,
                                                 padding=stride // 2))
    rows, cols = np.mgrid[0:6, 0:7].astype(np.float32)
    x = np.stack([1 + 0.5 * rows - 0.25 * cols, np.full_like(rows, 3)])[None]
    y = layer(x)
    assert y.shape == (1, 2, 6 * stride, 7 * stride)
    r, c = (np.mgrid[0:6 * stride, 0:7 * stride] + 0.5) / stride - 0.5
    inner = (slice(stride, -stride), slice(stride, -stride))
    np.testing.assert_allclose(y[0, 0][inner], (1 + 0.5 * r - 0.25 * c)[inner], atol=1e-5)
    np.testing.assert_allclose(y[0, 1][inner], 3, atol=1e-5)
    assert y[0, 1, 0, 0] < 3  # the border sees zeros beyond the image


def test_transposed_convolution_arguments_are_checked():
    with pytest.raises(shendu.ShenduError, match="padding <= kernel_size - 1"):
        nn.ConvTranspose2d(1, 1, 3, padding=3)
    with pytest.raises(shendu.ShenduError, match="output_padding < stride"):
        nn.ConvTranspose2d(1, 1, 3, stride=2, output_padding=2)
    with pytest.raises(shendu.ShenduError, match="as many output channels as inputs"):
        nn.init.bilinear_(nn.ConvTranspose2d(1, 2, 4, stride=2, padding=1))


def test_upsample_arguments_are_checked():
    with pytest.raises(shendu.ShenduError, match="whole scale_factor >= 1"):
        nn.Upsample(1.5)
    with pytest.raises(shendu.ShenduError, match="mode must be one of nearest, bilinear"):
        nn.Upsample(2, mode="bicubic")


def test_embedding_gradient_matches_numerical_differentiation():
    shendu.manual_seed(0)
    layer = nn.Embedding(6, 4).double()
    tokens = np.array([[1, 5, 1], [0, 1, 3]])  # 1 three times, 2 and 4 never
    g = rand(2, 3, 4, seed=2)
    layer(tokens)
    assert layer.backward(g) is None  # tokens have no gradient
    numeric = numerical_grad(lambda: float((layer(tokens) * g).sum()), layer.weight.data)
    assert rel_error(layer.weight.grad, numeric) < 1e-8
    assert not layer.weight.grad[[2, 4]].any()


@pytest.mark.parametrize("tokens, message", [
    (np.array([0.0, 1.0]), "integer tokens in \\[0, 6\\), got float64"),
    (np.array([0, 6]), "from 0 to 6"),
    (np.array([-1, 2]), "from -1 to 2"),
])
def test_embedding_refuses_tokens_it_has_no_row_for(tokens, message):
    with pytest.raises(shendu.ShenduError, match=message):
        nn.Embedding(6, 4)(tokens)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_gradients_through_time_match_numerical_differentiation(batch_first):
    """L = Σ y·g + Σ h_T·g_h + Σ c_T·g_c: every gradient, the initial state's included."""
    shendu.manual_seed(0)
    layer = nn.LSTM(3, 4, batch_first=batch_first).double()
    x = rand(2, 5, 3, seed=1) if batch_first else rand(5, 2, 3, seed=1)
    h0, c0 = rand(1, 2, 4, seed=2), rand(1, 2, 4, seed=3)
    g, gh, gc = rand(*x.shape[:2], 4, seed=4), rand(1, 2, 4, seed=5), rand(1, 2, 4, seed=6)

    def loss():
        y, (h, c) = layer(x, (h0, c0))
        return float((y * g).sum() + (h * gh).sum() + (c * gc).sum())

    loss()
    dx, (dh0, dc0) = layer.backward(g, (gh, gc))
    analytic = {name: p.grad.copy() for name, p in layer.named_parameters()}
    for got, array in ((dx, x), (dh0, h0), (dc0, c0)):
        assert rel_error(got, numerical_grad(loss, array)) < 1e-7
    for name, p in layer.named_parameters():
        assert rel_error(analytic[name], numerical_grad(loss, p.data)) < 1e-7, name


def test_lstm_checks_its_input():
    with pytest.raises(shendu.ShenduError, match=r"shape \(T, N, 3\), got float64 \(5, 2, 4\)"):
        nn.LSTM(3, 4)(rand(5, 2, 4))
