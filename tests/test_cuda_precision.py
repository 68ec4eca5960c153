"""float16 on CUDA (kernels.narrow over kernels.cuda): casts as NumPy's, layers that round the
exact result once, half models cast and moved on the device, and mixed-precision training whose
gradients are float64's within float16's precision and whose steps match the CPU's.

They run in numba's CUDA simulator, as tests/test_cuda_layers.py does (see there), with tiny
shapes: every GPU thread is a Python thread.
"""
import copy
import warnings

import numpy as np
import pytest

pytest.importorskip("numba_cuda")
from numba.core.errors import NumbaWarning  # noqa: E402

import shendu  # noqa: E402
from shendu import kernels, mixed, nn, optim  # noqa: E402

from test_cuda_layers import _device_images  # noqa: E402
from test_mixed import gradients  # noqa: E402
from test_precision import assert_rounded_once, layers, same_values  # noqa: E402

with warnings.catch_warnings():  # in the simulator, numba.cuda.random compiles in object mode
    warnings.simplefilter("ignore", NumbaWarning)
    from shendu.kernels import cuda as gpu

pytestmark = pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaWarning",
                                        "ignore:overflow:RuntimeWarning")

HALF = np.dtype(np.float16)


def on_device(x):
    """x on the GPU as the layers pass images (an NCHW view of NHWC memory), or as it is."""
    return _device_images(x) if x.ndim == 4 else gpu.array(x)


def test_cast_on_cuda_rounds_as_numpy_and_keeps_the_layout():
    rng = np.random.default_rng(0)
    special = [65504, 65519.996, 65520, 1e6, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0001,
               1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 6e-5, np.inf, -np.inf, np.nan, -0.0, 0.0]
    values = np.concatenate([special, rng.standard_normal(400) * 10.0 ** rng.integers(-9, 5, 400),
                             np.zeros(600 - 400 - len(special))]).astype(np.float32)
    nhwc = values.reshape(2, 5, 6, 10)
    x = on_device(nhwc.transpose(0, 3, 1, 2))
    half = gpu.cast(x, HALF)
    assert half.dtype == HALF and kernels.of(half) is kernels.narrow.narrow(HALF, "cuda")
    assert [s // 2 for s in half.strides] == [s // 4 for s in x.strides]  # still NHWC memory
    expected = nhwc.transpose(0, 3, 1, 2).astype(HALF)
    assert same_values(kernels.to_host(half), expected)
    back = kernels.narrow.cast(half, np.float32)  # the same function as on the CPU
    assert same_values(kernels.to_host(back), expected.astype(np.float32))


def test_scaled_and_all_finite_on_cuda_match_the_cpu():
    a = np.array([1.5, -2.0, 3e38, 1e-45, 0.0], np.float32)
    for factor in (2.0 ** 16, 2.0 ** -16):
        with np.errstate(over="ignore"):
            expected = kernels.cpu.scaled(a, factor)
        assert same_values(kernels.to_host(gpu.scaled(gpu.array(a), factor)), expected)
    assert gpu.all_finite(gpu.array(a)) and kernels.cpu.all_finite(a)
    for bad in (np.inf, -np.inf, np.nan):
        b = a.copy()
        b[3] = bad
        assert not gpu.all_finite(gpu.array(b)) and not kernels.cpu.all_finite(b)


@pytest.mark.parametrize("name", list(layers()))
def test_a_float16_layer_on_cuda_rounds_the_exact_result_once(name):
    layer, shape = layers()[name]
    layer.eval().half().to("cuda")
    x = np.random.default_rng(1).standard_normal(shape).astype(HALF)
    with nn.no_grad():
        y = layer(on_device(x))
    assert y.dtype == HALF and kernels.of(y).DEVICE == "cuda"
    assert_rounded_once(name, layer, x, kernels.to_host(y))


def test_a_model_is_cast_and_moved_in_float16_on_cuda():
    shendu.manual_seed(0)
    model = small_net()
    halves = {k: v.astype(HALF) for k, v in model.state_dict().items()}
    ways = [lambda m: m.half().to("cuda"), lambda m: m.to("cuda").half(),
            lambda m: m.to("cuda", dtype="float16")]
    for way in ways:
        moved = way(copy.deepcopy(model))
        for name, p in moved.named_parameters():
            assert kernels.of(p.data).DEVICE == "cuda" and p.data.dtype == HALF, name
            assert p.grad.dtype == HALF and kernels.of(p.grad).DEVICE == "cuda", name
        state = moved.state_dict()
        assert all(same_values(state[k], v) for k, v in halves.items())
        back = moved.to("cpu").float()  # and back, exactly
        assert all(np.array_equal(back.state_dict()[k], v.astype(np.float32))
                   for k, v in halves.items())
    with pytest.raises(shendu.ShenduError, match="on CUDA a model is stored as float32 or "
                                                 "float16, not bfloat16$"):
        copy.deepcopy(model).to("cuda", dtype="bfloat16")
    doubled = copy.deepcopy(model).double()
    with pytest.raises(shendu.ShenduError, match=r"not float64 \(.*\): call .float\(\) first"):
        doubled.to("cuda")
    assert all(p.data.dtype == np.float64 and isinstance(p.data, np.ndarray)
               for p in doubled.parameters())  # refused before anything moved
    with pytest.raises(shendu.ShenduError, match="not float64: move it to the CPU first"):
        copy.deepcopy(model).to("cuda").double()


def test_to_casts_on_the_side_of_the_move_that_stores_the_type():
    """As in PyTorch, one call moves and casts: to float64 off the GPU, from float64 onto it."""
    shendu.manual_seed(0)
    model = small_net()
    doubles = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    off = copy.deepcopy(model).to("cuda").to("cpu", dtype="float64")
    assert all(isinstance(p.data, np.ndarray) and p.grad.dtype == np.float64
               for p in off.parameters())
    assert all(np.array_equal(off.state_dict()[k], v) and off.state_dict()[k].dtype == v.dtype
               for k, v in doubles.items())
    on = copy.deepcopy(model).double().to("cuda", dtype="float32")
    assert all(kernels.of(p.data).DEVICE == "cuda" and p.data.dtype == np.float32
               for p in on.parameters())
    assert all(np.array_equal(on.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_float16_model_on_cuda_takes_the_cpus_optimizer_steps():
    x, t = np.random.default_rng(5).standard_normal((6, 5)).astype(HALF), np.arange(6) % 3
    found = {}
    for device in ("cpu", "cuda"):
        shendu.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 3)).half().to(device)
        opt, loss_fn = optim.Adam(model.parameters(), lr=0.01), nn.CrossEntropyLoss()
        for _ in range(2):
            opt.zero_grad()
            loss_fn(model(kernels.device(device).array(x)), t)
            model.backward(loss_fn.backward())
            opt.step()
        found[device] = model.state_dict()
    for k, v in found["cpu"].items():  # float32 sums in another order: at most a unit apart
        assert found["cuda"][k].dtype == HALF
        assert np.abs(found["cuda"][k].astype(float) - v.astype(float)).max() <= 2.0 ** -10, k


def small_net():
    """Convolution, BatchNorm, ReLU, pooling and two Linear layers (no dropout: the GPU draws
    other masks than the CPU)."""
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 8), nn.ReLU(),
                         nn.Linear(8, 4))


def test_mixed_gradients_on_cuda_are_float64_ones_within_float16_precision():
    x = np.random.default_rng(2).random((6, 1, 4, 4), dtype=np.float32)
    t = np.arange(6) % 4
    shendu.manual_seed(0)
    model = small_net()
    exact = gradients(copy.deepcopy(model).double(), x.astype(np.float64), t)
    on_cpu = gradients(copy.deepcopy(model), x, t, mixed.LossScaler(2.0 ** 10))
    dev = copy.deepcopy(model).to("cuda")
    on_gpu = gradients(dev, x, t, mixed.LossScaler(2.0 ** 10))
    assert {(kernels.of(p.grad).DEVICE, p.grad.dtype) for p in dev.parameters()} == {
        ("cuda", np.dtype(np.float32))}
    names = [name for name, _ in model.named_parameters()]
    for name, e, c, g in zip(names, exact, on_cpu, on_gpu):
        if name == "0.bias":  # followed by BatchNorm: 0 in float64, rounding noise in float16
            assert np.abs(g).max() <= 2e-2 * np.abs(exact[0]).max()
            continue
        assert np.abs(g - e).max() <= 2e-2 * np.abs(e).max(), name
        assert np.abs(g - c).max() <= 1e-2 * np.abs(e).max(), name


def test_a_mixed_trainer_on_cuda_learns_as_on_the_cpu_and_skips_overflow():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    t = rng.integers(0, 4, 6)
    found = {}
    for device in ("cpu", "cuda"):
        shendu.manual_seed(0)
        model = small_net().to(device)
        trainer = shendu.Trainer(model, optim.Adam(model.parameters(), lr=0.01), batch_size=6,
                                 progress=False, precision="mixed")
        trainer.scaler.scale = 2.0 ** 8  # 2^16 overflows at first here
        history = trainer.fit((x, t), (x[:3], t[:3]), epochs=2)
        found[device] = [h["train_loss"] for h in history]
        assert [h["skipped"] for h in history] == [0, 0]
    assert found["cuda"] == pytest.approx(found["cpu"], rel=1e-2)
    assert found["cuda"][1] < found["cuda"][0]
    trainer.scaler.scale = 2.0 ** 40  # every scaled gradient overflows float16
    before = trainer.model.state_dict()
    history = trainer.fit((x, t), (x[:3], t[:3]), epochs=1)  # one more epoch
    assert history[-1]["skipped"] == 1 and trainer.scaler.scale == 2.0 ** 39
    after = trainer.model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # BatchNorm's too
