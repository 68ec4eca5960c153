"""The CUDA path end to end, against the CPU path: every layer's forward and backward, the loss,
optimizer steps on a small network, moving models, saving them, and a Trainer's epoch.

They run in numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless it is
set), and on a GPU with NUMBA_ENABLE_CUDASIM=0. The simulator runs every GPU thread as a Python
thread, so the shapes are tiny, and odd, so that tiles have edges.
"""
import copy
import warnings

import numpy as np
import pytest

pytest.importorskip("numba_cuda")
from numba.core.errors import NumbaWarning  # noqa: E402

import shendu  # noqa: E402
from shendu import kernels, models, nn, optim  # noqa: E402
from shendu.errors import ShenduError  # noqa: E402

with warnings.catch_warnings():  # in the simulator, numba.cuda.random compiles in object mode
    warnings.simplefilter("ignore", NumbaWarning)
    from shendu.kernels import cuda as gpu

pytestmark = pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaWarning",
                                        "ignore:overflow:RuntimeWarning")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _host(a):
    assert kernels.of(a) is gpu, "expected a device array"
    return kernels.to_host(a)


def _close(a, b, what=""):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=what)


def _twins(make):
    """The layer made by `make` on the CPU, with non-trivial weights, and a copy on CUDA."""
    shendu.manual_seed(0)
    layer = make()
    for k, p in enumerate(layer.parameters()):
        p.data = p.data + 0.3 * _rand(*p.shape, seed=10 + k)
    return layer, copy.deepcopy(layer).to("cuda")


def _images(n, c, h, w, seed=0):
    """An NCHW view of NHWC memory, the layout the layers pass images in."""
    return _rand(n, h, w, c, seed=seed).transpose(0, 3, 1, 2)


def _device_images(x):
    return gpu.transpose(gpu.array(x.transpose(0, 2, 3, 1)), (0, 3, 1, 2))


def _compare(make, x, train=True):
    """Forward and backward of the layer on the CPU and on CUDA from the same weights and inputs:
    outputs, dL/dx, the parameters' gradients and the buffers agree."""
    cpu, dev = _twins(make)
    cpu.train(train)
    dev.train(train)
    x_dev = _device_images(x) if x.ndim == 4 else gpu.array(x)
    y, y_dev = cpu(x), dev(x_dev)
    _close(_host(y_dev), y, "y")
    dy = _rand(*y.shape, seed=5)
    dx, dx_dev = cpu.backward(dy), dev.backward(gpu.array(dy))
    _close(_host(dx_dev), dx, "dx")
    for (name, p), q in zip(cpu.named_parameters(), dev.parameters()):
        _close(_host(q.grad), p.grad, f"d{name}")
    for (name, b), (_, b_dev) in zip(cpu.named_buffers(), dev.named_buffers()):
        _close(_host(b_dev), b, name)


LAYERS = [  # (constructor, input shape)
    (lambda: nn.Linear(7, 5), (3, 7)),
    (lambda: nn.Linear(3, 2, bias=False), (5, 3)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 4)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=2), (1, 2, 7, 6)),
    (lambda: nn.Conv2d(3, 2, 1, bias=False), (2, 3, 3, 5)),
    (lambda: nn.ConvReLU2d(nn.Conv2d(2, 3, 3, stride=2, padding=1)), (2, 2, 7, 6)),
    (lambda: nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, output_padding=1), (1, 2, 2, 3)),
    (lambda: nn.Upsample(2, mode="bilinear"), (2, 3, 3, 4)),
    (lambda: nn.Identity(), (2, 3, 4, 5)),
    (lambda: nn.MaxPool2d(2), (2, 3, 5, 4)),
    (lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 7, 5)),
    (lambda: nn.AvgPool2d(2), (2, 3, 5, 4)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), (1, 2, 7, 5)),
    (lambda: nn.GlobalAvgPool2d(), (2, 3, 4, 5)),
    (lambda: nn.Flatten(), (2, 3, 4, 5)),
    (lambda: nn.ReLU(), (2, 3, 4, 5)),
    (lambda: nn.ReLU(), (3, 7)),
    (lambda: nn.LeakyReLU(0.2), (2, 3, 4, 5)),
    (lambda: nn.BatchNorm1d(5), (7, 5)),
    (lambda: nn.BatchNorm2d(3), (3, 3, 4, 5)),
    (lambda: nn.BatchNormReLU2d(nn.BatchNorm2d(3)), (3, 3, 4, 5)),
    (lambda: nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())), (2, 3, 5, 4)),
    (lambda: nn.Residual(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Conv2d(2, 3, 1, stride=2)),
     (2, 2, 5, 4)),
    (lambda: nn.Concat(nn.Conv2d(2, 3, 1), nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.ReLU())),
     (2, 2, 5, 4)),
    (lambda: nn.Concat(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), nn.Linear(4, 2))), (3, 4)),
    (lambda: models.PadShortcut(2, 2), (2, 3, 5, 5)),
    (lambda: nn.Residual(nn.Conv2d(2, 3, 3, stride=2, padding=1), models.PadShortcut(2, 1)),
     (2, 2, 5, 5)),
    (lambda: nn.ResidualReLU(nn.Residual(nn.Conv2d(2, 3, 3, stride=2, padding=1),
                                         models.PadShortcut(2, 1))), (2, 2, 5, 5)),
]


@pytest.mark.parametrize("make,shape", LAYERS,
                         ids=[f"{type(make()).__name__}-{shape}" for make, shape in LAYERS])
def test_layer_on_cuda_matches_the_cpu(make, shape):
    x = _images(*shape) if len(shape) == 4 else _rand(*shape)
    _compare(make, x)


@pytest.mark.parametrize("make,shape", [(lambda: nn.BatchNorm2d(3), (2, 3, 4, 3)),
                                        (lambda: nn.BatchNormReLU2d(nn.BatchNorm2d(3)),
                                         (2, 3, 4, 3)),
                                        (lambda: nn.BatchNorm1d(4), (5, 4))])
def test_batchnorm_in_eval_mode_matches_the_cpu(make, shape):
    def trained():
        layer = make()
        layer.running_mean = _rand(layer.num_features, seed=1)
        layer.running_var = 1 + _rand(layer.num_features, seed=2) ** 2
        return layer
    _compare(trained, _images(*shape) if len(shape) == 4 else _rand(*shape), train=False)


def test_folded_inference_on_cuda_matches_the_cpu():
    """Conv2d + BatchNorm2d folded into one convolution in inference, on the device."""
    from test_module import _folding_net
    model, x = _folding_net()
    with nn.no_grad():
        y = model(x)
        y_dev = copy.deepcopy(model).to("cuda")(_device_images(x))
    _close(_host(y_dev), y, "y")


def test_contiguous_nchw_input_as_from_the_host():
    # data arrives as plain NCHW; the identity shortcut then meets a channels-last body output
    make = lambda: nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()))  # noqa
    cpu, dev = _twins(make)
    x = _rand(2, 2, 5, 4)
    _close(_host(dev(gpu.array(x))), cpu(x))
    dy = _rand(2, 2, 5, 4, seed=1)
    _close(_host(dev.backward(gpu.array(dy))), cpu.backward(dy))


def test_dropout_on_cuda(monkeypatch):
    monkeypatch.setattr(gpu, "RANDOM_STATES", 32)  # the simulator runs a thread per generator
    layer = nn.Dropout(0.3).to("cuda")
    x, dy = _rand(6, 9), _rand(6, 9, seed=1)
    y = _host(layer(gpu.array(x)))
    keep = y != 0
    assert 0 < keep.sum() < x.size
    scale = np.float32(1) / np.float32(0.7)
    np.testing.assert_array_equal(y, np.where(keep, x * scale, 0))
    np.testing.assert_array_equal(_host(layer.backward(gpu.array(dy))),
                                  np.where(keep, dy * scale, 0))
    layer.eval()
    np.testing.assert_array_equal(_host(layer(gpu.array(x))), x)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_on_cuda_matches_the_cpu(smoothing):
    logits, t = _rand(5, 7) * 3, np.array([0, 6, 3, 3, 1])
    cpu, dev = nn.CrossEntropyLoss(smoothing), nn.CrossEntropyLoss(smoothing)
    loss, loss_dev = cpu(logits, t), dev(gpu.array(logits), t)
    assert isinstance(loss_dev, float)
    assert loss_dev == pytest.approx(loss, rel=1e-5)
    _close(_host(dev.backward()), cpu.backward())
    with pytest.raises(ShenduError, match="integer labels"):
        dev(gpu.array(logits), np.array([0, 7, 3, 3, 1]))  # checked on the host


def test_no_grad_keeps_nothing_for_backward():
    _, model = _twins(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
                                            nn.Flatten(), nn.Linear(8, 3)))
    with nn.no_grad():
        model(gpu.array(_rand(2, 1, 4, 4)))
    assert model[0].x is None and model[1].cache is None and model[2].y is None
    assert model[4].x is None
    with pytest.raises(ShenduError, match="backward needs a forward pass"):
        model.backward(gpu.array(_rand(2, 3)))


def test_summary_of_a_cuda_model():
    shendu.manual_seed(0)
    model = tiny_net()
    rows = shendu.summary(model, (1, 6, 6))
    assert shendu.summary(model.to("cuda"), (1, 6, 6)) == rows


def test_errors_name_the_device():
    model = nn.Sequential(nn.Linear(3, 2)).to("cuda")
    with pytest.raises(ShenduError, match="weights on cuda but its input on cpu"):
        model(_rand(2, 3))
    with pytest.raises(ShenduError, match="no CUDA kernel"):
        nn.Sigmoid()(gpu.array(_rand(2, 3)))
    with pytest.raises(ShenduError, match="float32"):
        nn.Linear(3, 2).astype(np.float64).to("cuda")
    opt = optim.RMSprop(model.parameters())
    model(gpu.array(_rand(2, 3)))
    model.backward(gpu.array(_rand(2, 2)))
    with pytest.raises(ShenduError, match="RMSprop has no CUDA update"):
        opt.step()


# -- a small network, trained -----------------------------------------------------------------
def tiny_net(num_classes=4, input_shape=(1, 6, 6)):
    """conv-BN-ReLU-pool, a residual block, a linear classifier (no dropout: the devices draw
    different masks). Biases are left out before BatchNorm, which cancels their gradient."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3),
                                  nn.ReLU())),
        nn.Flatten(), nn.Linear(3 * (h // 2) * (w // 2), num_classes))


def _train(model, make_opt, x, t, steps=2):
    """Optimizer made before the model moves (its state follows the parameters)."""
    opt = make_opt(model.parameters())
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    device = kernels.of(model.parameters()[0].data)
    losses = []
    for _ in range(steps):
        losses.append(loss_fn(model(device.array(x)), t))
        model.backward(loss_fn.backward())
        opt.step()
    return losses, opt


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01)], ids=["sgd", "adam"])
def test_training_steps_on_cuda_match_the_cpu(make_opt):
    shendu.manual_seed(0)
    cpu = tiny_net()
    dev = copy.deepcopy(cpu)
    x, t = np.random.default_rng(1).random((4, 1, 6, 6), dtype=np.float32), np.array([0, 3, 1, 3])
    dev_opt = make_opt(dev.parameters())
    dev.to("cuda")
    losses, cpu_opt = _train(cpu, make_opt, x, t)
    dev_losses, _ = _train(dev, lambda ps: dev_opt, x, t)
    assert dev_losses == pytest.approx(losses, rel=1e-5)
    for name, value in cpu.state_dict().items():
        _close(dev.state_dict()[name], value, name)
    for name, value in cpu_opt.state_dict()["buffers"].items():
        saved = dev_opt.state_dict()["buffers"][name]
        assert isinstance(saved, np.ndarray)
        _close(saved, value, name)


def test_moving_a_model_round_trips_exactly():
    shendu.manual_seed(0)
    model = tiny_net()
    before = model.state_dict()
    assert model.to("cuda") is model
    assert all(kernels.of(a) is gpu for _, a in model._arrays())
    assert all(kernels.of(p.grad) is gpu for p in model.parameters())
    state = model.state_dict()
    assert all(type(a) is np.ndarray for a in state.values())
    model.to("cpu")
    assert all(type(a) is np.ndarray for _, a in model._arrays())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
        np.testing.assert_array_equal(state[name], before[name])


def test_load_state_dict_puts_values_on_the_models_device():
    shendu.manual_seed(0)
    source, target = tiny_net(), tiny_net().to("cuda")
    target.load_state_dict(source.state_dict())
    assert all(kernels.of(a) is gpu for _, a in target._arrays())
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, source.state_dict()[name])


@pytest.fixture
def tiny(monkeypatch):
    """tiny_net by name (models.get gives it the config that saving needs)."""
    monkeypatch.setitem(models._REGISTRY, "tiny", tiny_net)
    return lambda **kw: models.get("tiny", input_shape=(1, 6, 6), **kw)


def test_save_and_load_a_cuda_trained_model(tmp_path, tiny):
    shendu.manual_seed(0)
    model = tiny(num_classes=3).to("cuda")
    x, t = np.random.default_rng(1).random((3, 1, 6, 6), dtype=np.float32), np.array([0, 2, 1])
    _train(model, lambda ps: optim.Adam(ps, lr=0.01), x, t, steps=1)
    shendu.save(model, tmp_path / "run")
    loaded = shendu.load(tmp_path / "run")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)
    model.eval()
    _close(shendu.predict_proba(loaded, x), shendu.predict_proba(model, x))


def test_without_a_gpu_to_cuda_raises_and_the_model_stays(monkeypatch):
    """As in PyTorch: .to("cuda") without a GPU is an error, not a silent stay on the CPU."""
    monkeypatch.setattr(gpu, "available", lambda: False)
    model = tiny_net()
    with pytest.raises(ShenduError, match=r"no CUDA GPU is available.*shendu\.cuda_available"):
        model.to("cuda")
    assert all(type(a) is np.ndarray for _, a in model._arrays())
    assert shendu.cuda_available() is False


def test_without_numba_cuda_to_cuda_says_what_to_install(monkeypatch):
    monkeypatch.setattr(shendu.kernels, "_cuda", lambda: None)
    with pytest.raises(ShenduError, match=r"pip install 'shendu\[cuda\]'"):
        tiny_net().to("cuda")
    assert shendu.cuda_available() is False


def test_cuda_available_means_a_real_gpu():
    assert shendu.cuda_available() is (not gpu.SIMULATED)
    with pytest.raises(ShenduError, match="unknown device"):
        tiny_net().to("gpu")


def test_a_trainer_epoch_on_cuda_matches_the_cpu(tmp_path, tiny):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 1, 6, 6), dtype=np.uint8)
    t = rng.integers(0, 4, 6)
    histories = {}
    for device in ("cpu", "cuda"):
        shendu.manual_seed(0)
        model = tiny().to(device)
        trainer = shendu.Trainer(model, optim.Adam(model.parameters(), lr=0.01), batch_size=4,
                                 run_dir=tmp_path / device, progress=False)
        histories[device] = trainer.fit((x, t), (x[:5], t[:5]), epochs=1)
        assert kernels.of(model.parameters()[0].data) is kernels.device(device)
    cpu, dev = histories["cpu"][0], histories["cuda"][0]
    assert dev.keys() == cpu.keys()
    assert dev["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-5)
    assert (dev["train_acc"], dev["test_acc"]) == (cpu["train_acc"], cpu["test_acc"])
    # checkpoints hold host arrays: new models resume from them, each on its device, for a
    # second epoch (the optimizer's moments go to the GPU at its first step)
    for device in ("cpu", "cuda"):
        model = tiny().to(device)
        trainer = shendu.Trainer(model, optim.Adam(model.parameters(), lr=0.01), batch_size=4,
                                 progress=False)
        histories[device] = trainer.fit((x, t), (x[:5], t[:5]), epochs=2,
                                        resume=tmp_path / device)
    cpu, dev = histories["cpu"][1], histories["cuda"][1]
    assert dev["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-5)
    for name, value in shendu.load(tmp_path / "cpu").state_dict().items():
        _close(shendu.load(tmp_path / "cuda").state_dict()[name], value, name)


def test_embedding_on_cuda_matches_the_cpu():
    cpu, dev = _twins(lambda: nn.Embedding(5, 3))
    tokens = np.array([[4, 0, 4], [1, 4, 2]])
    _close(_host(dev(tokens)), cpu(tokens), "y")
    dy = _rand(2, 3, 3, seed=5)
    cpu.backward(dy)
    dev.backward(gpu.array(dy))
    np.testing.assert_array_equal(_host(dev.weight.grad), cpu.weight.grad)  # the same sums


def test_lstm_on_cuda_matches_the_cpu():
    cpu, dev = _twins(lambda: nn.LSTM(2, 3, batch_first=True))
    x, state = _rand(2, 3, 2, seed=1), (_rand(1, 2, 3, seed=2), _rand(1, 2, 3, seed=3))
    y, (h, c) = cpu(x, state)
    y_dev, (h_dev, c_dev) = dev(gpu.array(x), tuple(gpu.array(s) for s in state))
    for a, b, what in ((y_dev, y, "y"), (h_dev, h, "h"), (c_dev, c, "c")):
        _close(_host(a), b, what)
    dy, dh = _rand(*y.shape, seed=4), _rand(*h.shape, seed=5)
    dx, (dh0, _) = cpu.backward(dy, (dh, np.zeros_like(dh)))
    dx_dev, (dh0_dev, _) = dev.backward(gpu.array(dy),
                                        (gpu.array(dh), gpu.array(np.zeros_like(dh))))
    _close(_host(dx_dev), dx, "dx")
    _close(_host(dh0_dev), dh0, "dh0")
    for (name, p), q in zip(cpu.named_parameters(), dev.parameters()):
        _close(_host(q.grad), p.grad, f"d{name}")
