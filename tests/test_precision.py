"""Models stored in fewer bits (kernels.narrow, Module.astype / .half() / .bfloat16()).

Each layer stored in float16 or bfloat16 computes what the float64 layer computes on the same
16-bit values, rounded once to 16 bits: within one unit in the last place of the 16-bit type
(the float32 sums inside may round the other way at a tie, never further); a layer of several
kernels within one unit per kernel. Whole networks stay
close to their float64 selves, and every array of a 16-bit model stays 16-bit."""
import ml_dtypes
import numpy as np
import pytest

import shendu
from shendu import kernels, models, nn
from shendu.nn.graph import Residual

SIXTEEN = ["float16", "bfloat16"]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# Layers of more than one kernel round once per kernel: BatchNorm's 1/√(σ² + ε), then its
# normalisation; a residual block's body, then its sum.
ROUNDINGS = {"batchnorm": 4, "residual": 2}


def ulp(values, dtype):
    """One unit in the last place of `dtype` at each value (its spacing there)."""
    info = ml_dtypes.finfo(np.dtype(dtype))
    exponent = np.floor(np.log2(np.maximum(np.abs(values), float(info.smallest_normal))))
    return 2.0 ** (exponent - info.nmant)


def layers():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    bn = nn.BatchNorm2d(3)
    bn.running_mean, bn.running_var = rand(3, seed=3) * 0.1, 1 + rand(3, seed=4) ** 2
    return {"conv": (conv, (2, 3, 6, 6)), "linear": (nn.Linear(12, 4), (3, 12)),
            "maxpool": (nn.MaxPool2d(2), (2, 3, 6, 6)), "avgpool": (nn.AvgPool2d(3, 1, 1), (2, 3, 5, 5)),
            "global avgpool": (nn.GlobalAvgPool2d(), (2, 3, 4, 4)), "relu": (nn.ReLU(), (4, 7)),
            "batchnorm": (bn, (2, 3, 4, 4)),
            "residual": (Residual(nn.Conv2d(3, 3, 3, padding=1)), (2, 3, 4, 4))}


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("name", list(layers()))
def test_a_16_bit_layer_rounds_the_exact_result_once(name, dtype):
    layer, shape = layers()[name]
    layer.eval()
    layer.astype(dtype)
    x = rand(*shape, seed=1).astype(dtype)
    with nn.no_grad():
        y = layer(x)
    assert y.dtype == np.dtype(kernels.narrow.DTYPES[dtype])
    assert_rounded_once(name, layer, x, y)


def assert_rounded_once(name, layer, x, y):
    """y, the output of the 16-bit `layer` (layers()[name]) on x, is the exact output of the same
    layer in float64 with the same values rounded once per kernel (ROUNDINGS) to y's type."""
    wide = layers()[name][0]
    wide.eval()
    wide.astype("float64")
    wide.load_state_dict({k: v.astype(np.float64) for k, v in layer.state_dict().items()})
    with nn.no_grad():
        exact = wide(x.astype(np.float64))
        # a body's output, rounded before the sum, may be larger than the sum
        size = np.maximum(np.abs(exact), np.abs(wide.body(x.astype(np.float64)))
                          if name == "residual" else 0)
    bound = ROUNDINGS.get(name, 1) * ulp(size, y.dtype) + 1e-12
    assert np.all(np.abs(y.astype(np.float64) - exact) <= bound), name


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("name", ["deepconvnet", "bncnn", "resnet20"])
def test_a_16_bit_network_stays_near_its_float64_self(name, dtype):
    shendu.manual_seed(0)
    model = models.get(name, input_shape=(1, 28, 28)).eval()
    images = np.random.default_rng(2).random((6, 1, 28, 28))
    state = model.state_dict()
    model.to(dtype=dtype)
    assert {a.dtype for _, a in model._arrays()} == {np.dtype(kernels.narrow.DTYPES[dtype])}
    with nn.no_grad():
        y = model(images.astype(model.parameters()[0].data.dtype))
    wide = models.get(name, input_shape=(1, 28, 28)).eval().double()
    wide.load_state_dict(state)
    with nn.no_grad():
        exact = wide(images)
    eps = float(ml_dtypes.finfo(np.dtype(kernels.narrow.DTYPES[dtype])).eps)
    error = np.abs(y.astype(np.float64) - exact).max() / np.abs(exact).max()
    assert error < 30 * eps, error  # a few roundings per layer, not more
    assert error > 0  # the test can tell 16 bits from 64


def test_half_bfloat16_float_double_and_to_set_the_storage():
    layer = nn.Linear(3, 2)
    assert layer.half().weight.data.dtype == np.float16
    assert layer.bfloat16().weight.data.dtype == ml_dtypes.bfloat16
    assert layer.double().weight.data.dtype == np.float64
    assert layer.float().weight.data.dtype == np.float32
    assert layer.to(dtype="float16").weight.grad.dtype == np.float16
    assert layer.to("cpu", dtype=np.float32).weight.data.dtype == np.float32
    assert layer.to("bfloat16").weight.data.dtype == ml_dtypes.bfloat16  # a type alone, first
    assert layer.to(np.float64).weight.grad.dtype == np.float64
    with pytest.raises(shendu.ShenduError, match="not 'int8'"):
        layer.to(dtype="int8")
    with pytest.raises(shendu.ShenduError, match="not <class 'numpy.int8'>"):
        layer.to(np.int8)
    with pytest.raises(shendu.ShenduError, match="unknown device 'gpu'"):
        layer.to("gpu")
    with pytest.raises(shendu.ShenduError, match=r"not \['cpu'\]"):  # not a TypeError
        layer.to(["cpu"])


@pytest.mark.parametrize("make_opt", [
    lambda ps: shendu.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: shendu.optim.Adam(ps, lr=0.01)], ids=["sgd", "adam"])
@pytest.mark.parametrize("dtype", SIXTEEN)
def test_a_16_bit_model_takes_optimizer_steps_as_float64_does(dtype, make_opt):
    """The updates are computed in float32 and stored in 16 bits: weights, velocity, moments."""
    x, t = rand(6, 5, seed=5), np.arange(6) % 3
    steps = {}
    for name in (dtype, "float64"):
        shendu.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 3)).to(dtype=name)  # no unit whose gradient is 0
        if name == dtype:  # the float64 model starts from the 16-bit values
            start = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(start)
        opt, loss_fn = make_opt(model.parameters()), nn.CrossEntropyLoss()
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x.astype(model[0].weight.data.dtype)), t)
            model.backward(loss_fn.backward())
            opt.step()
        steps[name] = {k: v.astype(np.float64) - start[k] for k, v in model.state_dict().items()}
    for k, exact in steps["float64"].items():
        assert np.abs(exact).max() > 0
        found = steps[dtype][k]
        eps = float(ml_dtypes.finfo(np.dtype(kernels.narrow.DTYPES[dtype])).eps)
        # each weight moved as in float64, within a few roundings of the weights themselves
        assert np.abs(found - exact).max() <= 8 * eps * np.abs(start[k]).max() + 0.02 * np.abs(
            exact).max(), k


def test_a_model_and_its_input_must_agree_on_the_type():
    layer = nn.Linear(3, 2).half()
    with pytest.raises(shendu.ShenduError, match="computes in float16 but its input is float32"):
        layer(np.ones((1, 3), np.float32))


@pytest.mark.parametrize("dtype", ["float64", *SIXTEEN])
def test_evaluate_feeds_a_model_its_own_type(dtype):
    shendu.manual_seed(0)
    model = models.get("deepconvnet").eval()
    images = np.random.default_rng(3).integers(0, 256, (20, 1, 28, 28), dtype=np.uint8)
    expected = shendu.predict_proba(model, images)
    model.to(dtype=dtype)
    assert np.abs(shendu.predict_proba(model, images) - expected).max() < 0.02


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_a_16_bit_model_saves_and_loads_without_loss(dtype, tmp_path):
    shendu.manual_seed(0)
    model = models.get("deepconvnet").to(dtype=dtype)
    shendu.save(model, tmp_path / "run")
    loaded = shendu.load(tmp_path / "run")  # float32, holding every 16-bit value exactly
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == np.float32 and np.array_equal(a.astype(np.float32), b), name


# -- kernels.narrow.cast: NumPy's casts, on the bit patterns -------------------------------------
def same_values(ours, theirs):
    """Bitwise equal, except that any NaN matches any NaN (payloads may differ)."""
    nan = np.isnan(theirs.astype(np.float32))
    return (np.array_equal(nan, np.isnan(ours.astype(np.float32)))
            and ours.dtype == theirs.dtype
            and np.array_equal(ours[~nan].view(np.uint8), theirs[~nan].view(np.uint8)))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_cast_widens_every_16_bit_value_exactly(dtype):
    every = np.arange(2 ** 16, dtype=np.uint16).view(dtype)
    assert same_values(kernels.narrow.cast(every, np.float32), every.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_cast_rounds_float32_as_numpy_does(dtype):
    """Every float32 bit pattern whose bits below the 16-bit type's mantissa are one of the
    rounding cases (0, 1, just below, at and just above half, all ones), for every pattern of
    the bits above: each tie, carry, subnormal, overflow and NaN; then random patterns."""
    dropped = 13 if dtype == np.float16 else 16  # mantissa bits float32 has and dtype lacks
    half = 1 << (dropped - 1)
    low = np.array([0, 1, half - 1, half, half + 1, (1 << dropped) - 1], np.uint32)
    high = np.arange(2 ** (32 - dropped), dtype=np.uint32) << dropped
    bits = np.concatenate([(high[:, None] | low).ravel(),
                           np.random.default_rng(0).integers(0, 2 ** 32, 10 ** 6, np.uint32)])
    values = bits.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(dtype)
    assert same_values(kernels.narrow.cast(values, dtype), expected)


def test_cast_keeps_the_layout_and_writes_into_out():
    nhwc = rand(2, 3, 4, 5).astype(np.float32).transpose(0, 3, 1, 2)  # NCHW view of NHWC
    half = kernels.narrow.cast(nhwc, np.float16)
    assert half.strides[1] == 2 and np.array_equal(half, nhwc.astype(np.float16))
    assert np.array_equal(kernels.narrow.cast(half, np.float32), nhwc.astype(np.float16))
    strided = rand(6, 8).astype(np.float32)[:, ::2]  # not dense: copied to a dense layout first
    assert np.array_equal(kernels.narrow.cast(strided, np.float16), strided.astype(np.float16))
    out = np.zeros((6, 8), np.float16)
    kernels.narrow.cast(strided, np.float16, out=out[:, ::2])  # a layout the loops do not take
    assert np.array_equal(out[:, ::2], strided.astype(np.float16)) and not out[:, 1::2].any()
    out = np.zeros((5, 4), np.float16).T  # a transposed target
    source = rand(4, 5).astype(np.float32)
    kernels.narrow.cast(source, np.float16, out=out)
    assert np.array_equal(out, source.astype(np.float16))
