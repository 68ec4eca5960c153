"""Module bookkeeping: registration, names, state dicts, modes, and clear errors."""
import functools
import resource
import sys

import numpy as np
import pytest

import shendu
import shendu.bench
from shendu import ShenduError, kernels, manual_seed, models, nn


def test_parameters_register_in_definition_order_with_dotted_names():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(8, 3)))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.1.weight", "2.1.bias"]
    assert [p.shape for p in model.parameters()] == [(2, 1, 3, 3), (2,), (3, 8), (3,)]


def test_deep_conv_net_has_the_chapters_parameter_count():
    # by hand: conv 3×3 layers (out·in·9 + out), then 1024→50 and 50→10 affine layers
    convs = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    expected = sum(o * i * 9 + o for i, o in convs) + (64 * 4 * 4 * 50 + 50) + (50 * 10 + 10)
    assert expected == 123552
    model = models.DeepConvNet()
    assert model.num_parameters() == expected
    assert models.get("deepconvnet").num_parameters() == expected


def test_deep_conv_net_uses_he_initialisation_and_zero_biases():
    shendu.manual_seed(0)
    model = models.DeepConvNet()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert not p.data.any()
        else:
            fan_in = np.prod(p.shape[1:])
            assert p.data.dtype == np.float32
            assert abs(p.data.std() / np.sqrt(2 / fan_in) - 1) < 0.15, name


def test_state_dict_round_trip_and_strict_checks():
    a, b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    a.running_mean[:] = [1, 2, 3]
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.running_mean, [1, 2, 3])
    state = a.state_dict()
    state["running_mean"][0] = 99  # a copy: the model is untouched
    assert a.running_mean[0] == 1
    with pytest.raises(ShenduError, match="missing: bias"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "bias"})
    with pytest.raises(ShenduError, match=r"weight: shape \(4,\) in the file, \(3,\) in the model"):
        b.load_state_dict({**a.state_dict(), "weight": np.ones(4)})
    with pytest.raises(ShenduError, match="unexpected: extra"):
        b.load_state_dict({**a.state_dict(), "extra": np.ones(1)})


def test_train_and_eval_reach_every_layer():
    model = models.DeepConvNet()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_device_of_names_where_the_parameters_live():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    assert nn.device_of(model) is kernels.cpu
    assert nn.device_of(nn.Sequential(nn.ReLU())) is kernels.cpu  # nothing to place: the CPU
    half = nn.device_of(model.half())
    assert half is not kernels.cpu and half.DEVICE == "cpu"
    assert half.array(np.zeros(2, np.float32)).dtype == np.float16


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name,fused_kinds", [("deepconvnet", {"ConvReLU2d"}),
                                              ("fastnet", {"BatchNormReLU2d"}),
                                              ("resnet20", {"BatchNormReLU2d", "ResidualReLU"})])
def test_fusion_gives_the_same_bits(training, name, fused_kinds):
    """nn.fuse runs each Conv2d, BatchNorm2d or Residual and the ReLU after it as one layer
    (ConvReLU2d, BatchNormReLU2d, ResidualReLU): the same outputs, gradients and running
    statistics as the layers one by one, bit for bit, and the same parameters and buffers under
    the same names."""
    build = {"deepconvnet": models.DeepConvNet.__wrapped__, "fastnet": models.FastNet.__wrapped__,
             "resnet20": functools.partial(models.CifarResNet, 20, input_shape=(1, 28, 28))}[name]
    manual_seed(0)
    plain = build().train(training)  # the builder, before fusion
    manual_seed(0)
    fused = models.get(name).train(training)
    kinds = {type(m).__name__ for m in fused.modules()}
    assert fused_kinds <= kinds
    assert "ReLU" in {type(m).__name__ for m in plain.modules()}
    assert list(fused.state_dict()) == list(plain.state_dict())
    for (name, a), (_, b) in zip(fused.named_parameters(), plain.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    outputs, grads = [], []
    for model in (plain, fused):
        manual_seed(1)  # the same dropout masks in both passes
        outputs.append(model(x))
        dx = model.backward(np.ones_like(outputs[-1]))
        grads.append([dx] + [p.grad.copy() for p in model.parameters()])
    np.testing.assert_array_equal(outputs[1], outputs[0])
    for g_fused, g_plain in zip(grads[1], grads[0]):
        np.testing.assert_array_equal(g_fused, g_plain)
    for (name, a), (_, b) in zip(fused.named_buffers(), plain.named_buffers()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_fuse_is_a_pass_over_any_sequential():
    """Only a Conv2d or a BatchNorm2d directly followed by a ReLU, in any Sequential of the
    model, is fused; its place and its parameters' names stay; a fused model fuses no further."""
    manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2),
                          nn.ReLU(), nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU()), nn.ReLU())
    weight, running_var = model[0].weight, model[3].running_var
    names = [name for name, _ in model.named_parameters()]
    state = list(model.state_dict())
    assert nn.fuse(model.eval()) is model
    assert not any(m.training for m in model.modules())  # the fused layers keep the mode
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds == ["Sequential", "ConvReLU2d", "Identity", "Conv2d", "BatchNormReLU2d",
                     "Identity", "Sequential", "ConvReLU2d", "Identity", "ReLU"]
    assert model[0].weight is weight and [n for n, _ in model.named_parameters()] == names
    assert model[3].running_var is running_var and list(model.state_dict()) == state
    nn.fuse(model)
    assert [type(m).__name__ for m in model.modules()] == kinds


def _folding_net():
    """Every case of folding: Conv2d + BatchNormReLU2d (after nn.fuse), Conv2d (with a bias) +
    BatchNorm2d, and BatchNorm2d after a ConvReLU2d (not folded: the ReLU comes between), in
    a Residual's body too; running statistics away from 0 and 1."""
    manual_seed(0)
    model = nn.fuse(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))),
        nn.Conv2d(4, 3, 1), nn.ReLU(), nn.BatchNorm2d(3)))
    for p in model.parameters():
        p.data = p.data + 0.3 * np.random.default_rng(p.size).standard_normal(p.shape).astype(
            p.data.dtype)
    x = np.random.default_rng(1).standard_normal((5, 2, 6, 7)).astype(np.float32)
    for _ in range(3):
        model(3 * x + 1)
    return model.eval(), x


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_inference_folds_batchnorm_into_the_convolution_before_it(monkeypatch, dtype, tol):
    """In eval mode inside no_grad() a Sequential runs Conv2d + BatchNorm2d as one convolution
    with folded weights: the outputs of the layers one by one, within rounding; BatchNorm's own
    forward is not called for those it folded."""
    model, x = _folding_net()
    model.astype(dtype)
    x = x.astype(dtype)
    want = model(x)  # eval mode, recording for backward: the layers one by one
    calls = []
    forward = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward", lambda self, x: calls.append(self) or
                        forward(self, x))
    with nn.no_grad():
        got = model(x)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert calls == [model[6]]  # only the BatchNorm after the ReLU ran on its own
    calls.clear()
    model(x)
    assert len(calls) == 3  # outside no_grad(): the layers one by one, differentiable
    with nn.no_grad():
        model.train()
        model(x)
    assert len(calls) == 6  # in training: batch statistics, nothing folded


def test_no_grad_keeps_nothing_for_backward():
    """Inference inside no_grad() keeps no caches, in either mode; backward then says why."""
    model = models.DeepConvNet()
    x = np.random.default_rng(0).random((2, 1, 28, 28), np.float32)
    for mode in (True, False):
        model.train(mode)
        with nn.no_grad():
            y = model(x)
        assert all(getattr(layer, "x", None) is None for layer in model)
        with pytest.raises(ShenduError, match=r"outside shendu\.nn\.no_grad\(\)"):
            model.backward(np.ones_like(y))
        with nn.no_grad(), nn.enable_grad():  # enable_grad inside no_grad records again
            model(x)
        assert model.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("x,message", [
    (np.zeros((2, 3, 28, 28), np.float32), r"ConvReLU2d\(1, 16.*expects input of shape \(N, 1, H, W\), got \(2, 3, 28, 28\)"),
    (np.zeros((28, 28), np.float32), r"expects input of shape \(N, 1, H, W\), got \(28, 28\)"),
    (np.zeros((2, 1, 28, 28), np.uint8), "floating-point"),
])
def test_wrong_inputs_name_the_layer_and_the_shapes(x, message):
    with pytest.raises(ShenduError, match=message):
        models.DeepConvNet()(x)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ShenduError, match="unknown model 'lenet'.*deepconvnet"):
        models.get("lenet")


def test_summary_counts_multiply_adds_by_hand():
    # each convolution output sums C_in·3·3 products: (H·W·C_out) · C_in·9, then the affine layers
    convs = [(28, 1, 16), (28, 16, 16), (14, 16, 32), (16, 32, 32), (8, 32, 64), (8, 64, 64)]
    expected = sum(h * h * o * i * 9 for h, i, o in convs) + 1024 * 50 + 50 * 10
    table = shendu.summary(models.DeepConvNet(), (1, 28, 28))
    assert table.total_macs == expected
    assert "Multiply-adds per image: 8,772,340" in str(table) and expected == 8772340
    training, inference = shendu.bench.flops_per_image(models.DeepConvNet(), (1, 28, 28))
    assert inference == 2 * expected
    assert training == 3 * inference - 2 * (28 * 28 * 16 * 9)  # no input gradient for the data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_arrays_come_back_without_page_faults():
    """Importing shendu keeps freed blocks for reuse (shendu.tuning): a step that
    allocates and frees arrays of a few MiB (a batch's activations) faults no pages in again."""
    def step():
        a = np.ones(6 << 20, np.uint8)
        b = np.ones(5 << 20, np.uint8)
        del a
        c = np.ones(24 << 20, np.uint8)
        del b, c
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 100  # glibc's own: ~1800


def test_shendu_tuning_0_leaves_the_process_as_it_is(monkeypatch):
    calls = []
    monkeypatch.setattr(shendu.tuning, "keep_freed_memory", lambda: calls.append("mallopt"))
    monkeypatch.setenv("SHENDU_TUNING", "0")
    shendu.tuning.apply()
    assert calls == []
    monkeypatch.delenv("SHENDU_TUNING")
    shendu.tuning.apply()
    assert calls == ["mallopt"]
