"""int8 and binary weights after training (shendu.quantize, shendu.binarize): the int8 kernel
against a NumPy reference in exact integers; each quantized layer against the float layer it
replaces, within the rounding that quantization allows; whole models close to the float model;
the stored bytes; and the original model untouched."""
import numpy as np
import pytest

import shendu
from shendu import datasets, models, nn, optim
from shendu.kernels import int8
from shendu.quantization import (BinaryConv2d, BinaryLinear, QuantizedConv2d, QuantizedLinear,
                                 model_bytes)


def reference_conv(x, w, stride, pad):
    """The int8 convolution in int64 NumPy: every patch times every filter, summed."""
    n, h, wd, c = x.shape
    kh, kw, _, outs = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, oh, ow, outs), np.int64)
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, u:u + stride * oh:stride, v:v + stride * ow:stride, :]
            out += np.einsum("nijc,co->nijo", patch, w[u, v].astype(np.int64))
    return out


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 0), (1, 2)])
def test_the_int8_convolution_sums_exactly_in_int32(stride, pad):
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, (2, 7, 6, 5), dtype=np.int8)
    w = rng.integers(-127, 128, (3, 3, 5, 9), dtype=np.int8)
    acc = int8.conv(x, w, stride, pad)
    assert acc.dtype == np.int32
    assert np.array_equal(acc, reference_conv(x, w, stride, pad))


def quantized_layer(layer, shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with nn.no_grad():
        return layer(x), x


@pytest.mark.parametrize("relu", [False, True])
def test_a_quantized_convolution_is_the_float_one_up_to_its_rounding(relu):
    shendu.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    conv.bias.data = np.linspace(-0.5, 0.5, 6).astype(np.float32)
    if relu:
        conv = nn.ConvReLU2d(conv)
    expected, x = quantized_layer(conv, (2, 4, 5, 5))
    q = QuantizedConv2d(conv, float(np.abs(x).max()))
    got, _ = quantized_layer(q, (2, 4, 5, 5))
    # each of the 36 products errs by at most half a step of x times |w|, plus the reverse
    w = conv.weight.data
    bound = 36 * (q.x_scale / 2 * np.abs(w).max() + np.abs(x).max() * q.w_scale.max() / 2)
    assert np.abs(got - expected).max() <= bound
    assert np.abs(got - expected).max() > 0
    assert q.w_q.dtype == np.int8 and np.abs(q.w_q).max() == 127
    assert (got.min() >= 0) == relu


def test_a_quantized_and_a_binary_linear_layer():
    shendu.manual_seed(0)
    linear = nn.Linear(20, 5)
    expected, x = quantized_layer(linear, (3, 20))
    q = QuantizedLinear(linear, float(np.abs(x).max()))
    got, _ = quantized_layer(q, (3, 20))
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    b = BinaryLinear(linear)
    w = b.weights()
    alpha = np.abs(linear.weight.data).mean(axis=1, keepdims=True)
    assert np.array_equal(np.abs(w), np.broadcast_to(alpha, w.shape))
    assert np.array_equal(np.sign(w), np.where(linear.weight.data >= 0, 1, -1))
    got, _ = quantized_layer(b, (3, 20))
    assert np.allclose(got, x @ w.T + linear.bias.data, atol=1e-5)
    with pytest.raises(shendu.ShenduError, match="for inference"):
        b.backward(np.ones((3, 5), np.float32))


@pytest.fixture(scope="module")
def trained():
    (x, t), (x_test, t_test) = datasets.load_mnist()
    shendu.manual_seed(0)
    model = models.get("bncnn")
    shendu.Trainer(model, optim.Adam(model.parameters()), progress=False).fit(
        (x[:3000], t[:3000]), (x_test[:100], t_test[:100]))
    return model.eval(), x[:300], (x_test[:1000], t_test[:1000])


def test_an_int8_model_predicts_as_the_float_model(trained):
    model, calibration, (x_test, t_test) = trained
    before = model.state_dict()
    q = shendu.quantize(model, calibration)
    assert all(np.array_equal(a, model.state_dict()[k]) for k, a in before.items())  # untouched
    kinds = {type(m) for m in q.modules()}
    assert QuantizedConv2d in kinds and QuantizedLinear in kinds and nn.BatchNorm2d not in kinds
    p, pq = (shendu.predict_proba(m, x_test).argmax(1) for m in (model, q))
    assert np.mean(p == t_test) > 0.5  # trained (chance: 0.1)
    assert abs(np.mean(pq == t_test) - np.mean(p == t_test)) <= 0.01
    assert model_bytes(q) < 0.3 * model_bytes(model)


def test_a_binary_model_stores_a_bit_per_weight(trained):
    model, _, (x_test, _) = trained
    b = shendu.binarize(model)
    assert BinaryConv2d in {type(m) for m in b.modules()}
    weights = sum(m.weight.data.size for m in model.modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights / 8 <= model_bytes(b) < model_bytes(model) / 16
    assert shendu.predict_proba(b, x_test[:10]).shape == (10, 10)


def test_binary_training_computes_with_signs_and_updates_the_real_weights():
    """BinaryConnect: the forward pass uses ±α, the gradient found for them reaches the real
    weights unchanged (straight-through), and binarize then stores exactly the weights used."""
    shendu.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    x = np.random.default_rng(1).standard_normal((5, 1, 6, 6)).astype(np.float32)
    twin = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    twin.load_state_dict({k: (nn.layers.binary_weights(v) if k.endswith("weight") else v)
                          for k, v in model.state_dict().items()})
    shendu.quantization.train_binary(model)
    for net in (model, twin):  # the same loss and gradients as a float net holding ±α
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(net(x), np.arange(5) % 4)
        net.backward(loss_fn.backward())
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert np.allclose(p.grad, q.grad, atol=1e-6), name
    assert not np.array_equal(model[0].weight.data, twin[0].weight.data)  # the real ones kept
    b = shendu.binarize(model)
    assert np.array_equal(b[0].weights(), twin[0].weight.data)
