"""Every layer, the loss and the whole DeepConvNet against PyTorch (float32, weights copied in):
outputs, dL/dx and every parameter's gradient, in training and in eval mode."""
import numpy as np
import pytest

import shendu
from gradcheck import assert_close, assert_matches_torch, rand
from shendu import nn
from test_layers import LAYERS

torch = pytest.importorskip("torch")
F = torch.nn


class TorchConvReLU2d(F.Conv2d):
    """ReLU after a convolution, with the convolution's parameter names (weight, bias)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class TorchBatchNormReLU2d(F.BatchNorm2d):
    """ReLU after BatchNorm, with BatchNorm's names (weight, bias, running statistics)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def _to_torch(layer):
    """The same layer in PyTorch, with shendu's weights copied in."""
    kind = type(layer).__name__
    if kind == "Linear":
        t = F.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif kind in ("Conv2d", "ConvReLU2d"):
        t = (F.Conv2d if kind == "Conv2d" else TorchConvReLU2d)(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            bias=layer.bias is not None)
    elif kind == "ConvTranspose2d":
        t = F.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              layer.stride, layer.padding, layer.output_padding,
                              bias=layer.bias is not None)
    elif kind == "LeakyReLU":
        return F.LeakyReLU(layer.negative_slope)
    elif kind == "Upsample":
        return F.Upsample(scale_factor=layer.scale_factor, mode=layer.mode,
                          **({"align_corners": False} if layer.mode == "bilinear" else {}))
    elif kind in ("MaxPool2d", "AvgPool2d"):
        return getattr(F, kind)(layer.kernel_size, layer.stride, layer.padding)
    elif kind == "GlobalAvgPool2d":
        return F.Sequential(F.AdaptiveAvgPool2d(1), F.Flatten())
    elif kind in ("BatchNorm1d", "BatchNorm2d", "BatchNormReLU2d"):
        t = (TorchBatchNormReLU2d if kind == "BatchNormReLU2d" else getattr(F, kind))(
            layer.num_features, layer.eps, layer.momentum)
    else:
        return getattr(F, kind)()
    t.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()}, strict=False)
    return t


ORACLE = [(make, shape) for make, shape in LAYERS if "Dropout" not in repr(make())]


@pytest.mark.parametrize("make,shape", ORACLE, ids=[f"{make()!r}-{shape}" for make, shape in ORACLE])
def test_forward_and_backward_match_pytorch(make, shape):
    shendu.manual_seed(1)
    layer = make()
    assert_matches_torch(layer, _to_torch(layer), rand(*shape, seed=3).astype(np.float32), seed=4)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape, ignored", [((6,), 0), ((6,), 2), ((3, 4, 5), 7), ((2, 6), 3)])
def test_cross_entropy_matches_pytorch(smoothing, shape, ignored):
    """Per image, per pixel (N, K, H, W) and per word (N, K, L), with padding labels ignored."""
    t = np.random.default_rng(ignored).integers(0, 10, shape)
    t.reshape(-1)[::max(t.size // max(ignored, 1), 1)][:ignored] = -100
    z = rand(shape[0], 10, *shape[1:], seed=2).astype(np.float32)
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
    zt = torch.tensor(z, requires_grad=True)
    lt = F.CrossEntropyLoss(label_smoothing=smoothing)(zt, torch.tensor(t))
    lt.backward()
    assert np.isclose(loss(z, t), lt.item(), rtol=1e-5)
    assert_close(loss.backward(), zt.grad.numpy())
    assert loss.counted(t) == t.size - ignored
    right = (z.argmax(axis=1) == t).sum()
    assert loss.correct(z, t) == right  # an ignored label (-100) is never an argmax


@pytest.mark.parametrize("ours, theirs", [(nn.BCEWithLogitsLoss(), F.BCEWithLogitsLoss()),
                                          (nn.HuberLoss(0.5), F.HuberLoss(delta=0.5))])
def test_elementwise_losses_match_pytorch(ours, theirs):
    z = 3 * rand(5, 1, 4, 4, seed=5).astype(np.float32)
    y = np.random.default_rng(6).random((5, 1, 4, 4)).astype(np.float32)
    zt = torch.tensor(z, requires_grad=True)
    lt = theirs(zt, torch.tensor(y))
    lt.backward()
    assert np.isclose(ours(z, y), lt.item(), rtol=1e-5)
    assert ours.backward().dtype == np.float32
    assert_close(ours.backward(), zt.grad.numpy())


def _torch_deep_conv_net():
    layers = []
    for c_in, c_out, pad in ((1, 16, 1), (16, 16, 1), (16, 32, 1), (32, 32, 2), (32, 64, 1), (64, 64, 1)):
        layers += [F.Conv2d(c_in, c_out, 3, padding=pad), F.ReLU()]
        if c_in == c_out or pad == 2:
            layers.append(F.MaxPool2d(2))
    layers += [F.Flatten(), F.Linear(1024, 50), F.ReLU(), F.Dropout(0.5), F.Linear(50, 10), F.Dropout(0.5)]
    return F.Sequential(*layers)


def test_deep_conv_net_matches_pytorch():
    shendu.manual_seed(0)
    model = shendu.models.DeepConvNet()
    reference = _torch_deep_conv_net()
    names = [k for k in reference.state_dict()]
    assert len(names) == len(model.state_dict())
    # same structure, so the parameters correspond in order, whatever the layer indices
    reference.load_state_dict({k: torch.tensor(v) for k, v in zip(names, model.state_dict().values())})
    # eval mode (dropout off, so both compute the same function) is differentiable, as in PyTorch
    model.eval(), reference.eval()
    x = np.random.default_rng(0).random((8, 1, 28, 28), np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = model(x)
    yt = reference(xt)
    assert_close(y, yt.detach().numpy())
    dy = rand(8, 10, seed=1).astype(np.float32)
    yt.backward(torch.tensor(dy))
    assert_close(model.backward(dy), xt.grad.numpy())
    for (name, p), (tname, tp) in zip(model.named_parameters(), reference.named_parameters()):
        assert_close(p.grad, tp.grad.numpy())
    assert sum(p.numel() for p in reference.parameters()) == model.num_parameters() == 123552


EVAL_MODE = [(lambda: nn.BatchNorm1d(5), (8, 5)), (lambda: nn.BatchNorm2d(3), (4, 3, 5, 3)),
             (lambda: nn.BatchNormReLU2d(nn.BatchNorm2d(3)), (4, 3, 5, 3)),
             (lambda: nn.Dropout(0.3), (6, 9))]


@pytest.mark.parametrize("make,shape", EVAL_MODE, ids=[repr(m()) for m, _ in EVAL_MODE])
def test_eval_mode_backward_matches_pytorch(make, shape):
    """model.eval() changes only what Dropout and BatchNorm compute: BatchNorm normalises with
    its running statistics (constants, so dL/dx = γ/σ dy), Dropout is the identity. Both are
    differentiated like any other layer, as in PyTorch."""
    shendu.manual_seed(1)
    layer = make()
    for name in ("running_mean", "running_var"):  # statistics that are not the batch's
        if hasattr(layer, name):
            setattr(layer, name, (1 + rand(layer.num_features, seed=5) ** 2).astype(np.float32))
    for param in layer.parameters():
        param.data = param.data + 0.3 * rand(*param.shape, seed=7).astype(np.float32)
    reference = _to_torch(layer)
    layer.eval(), reference.eval()
    assert_matches_torch(layer, reference, rand(*shape, seed=3).astype(np.float32), seed=4)


@pytest.mark.parametrize("stride", [2, 3, 8])
def test_bilinear_transposed_convolution_is_pytorchs_interpolation_inside(stride):
    layer = nn.init.bilinear_(nn.ConvTranspose2d(3, 3, 2 * stride - stride % 2, stride=stride,
                                                 padding=stride // 2))
    x = rand(2, 3, 5, 6, seed=1).astype(np.float32)
    theirs = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=stride,
                                             mode="bilinear", align_corners=False).numpy()
    ours = layer(x)
    assert ours.shape == theirs.shape
    inner = (slice(None), slice(None), slice(stride, -stride), slice(stride, -stride))
    assert_close(ours[inner], theirs[inner])


def test_embedding_matches_pytorch():
    shendu.manual_seed(0)
    layer = nn.Embedding(7, 4)
    tokens = np.array([[1, 3, 1, 6], [6, 0, 1, 1]])
    theirs = torch.nn.Embedding(7, 4)
    theirs.weight.data = torch.tensor(layer.weight.data)
    out = theirs(torch.tensor(tokens))
    dy = rand(*out.shape, seed=1).astype(np.float32)
    out.backward(torch.tensor(dy))
    assert_close(layer(tokens), out.detach().numpy())
    layer.backward(dy)
    assert_close(layer.weight.grad, theirs.weight.grad.numpy())


@pytest.mark.parametrize("batch_first, with_state", [(False, True), (True, False)])
def test_lstm_matches_pytorch(batch_first, with_state):
    shendu.manual_seed(0)
    layer = nn.LSTM(3, 5, batch_first=batch_first)
    theirs = torch.nn.LSTM(3, 5, batch_first=batch_first)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = rand(4, 6, 3, seed=1).astype(np.float32)
    state = tuple(rand(1, 6 if not batch_first else 4, 5, seed=s).astype(np.float32)
                  for s in (2, 3)) if with_state else None
    xt = torch.tensor(x, requires_grad=True)
    st = tuple(torch.tensor(s, requires_grad=True) for s in state) if with_state else None
    yt, (ht, ct) = theirs(xt, st)
    y, (h, c) = layer(x, state)
    for ours, ref in ((y, yt), (h, ht), (c, ct)):
        assert_close(ours, ref.detach().numpy())
    dy, dh, dc = (rand(*a.shape, seed=s).astype(np.float32) for a, s in ((y, 4), (h, 5), (c, 6)))
    torch.autograd.backward([yt, ht, ct], [torch.tensor(a) for a in (dy, dh, dc)])
    dx, (dh0, dc0) = layer.backward(dy, (dh, dc))
    assert_close(dx, xt.grad.numpy())
    if with_state:
        assert_close(dh0, st[0].grad.numpy())
        assert_close(dc0, st[1].grad.numpy())
    for (name, p), q in zip(layer.named_parameters(), theirs.parameters()):
        assert_close(p.grad, q.grad.numpy())
