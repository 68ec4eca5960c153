"""Numerical differentiation and PyTorch comparison shared by the tests."""
import numpy as np

import shendu


def rand(*shape, seed=0):
    """Standard normal float64 values, the same for the same seed."""
    return np.random.default_rng(seed).standard_normal(shape)


def numerical_grad(f, x, eps=1e-6, entries=None):
    """Central differences of the scalar f() with respect to x (float64): every entry, or only
    the flat indices in `entries` (the others stay zero)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size) if entries is None else entries:
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-12)


def check_module_gradients(module, x, tol=1e-6, seed=0, samples=None, eps=1e-6):
    """Compare a float64 module's backward with numerical gradients of L = Σ module(x) · g,
    over every entry or over `samples` random entries of each array (for whole networks).
    Central differences of step `eps`: a larger step for a parameter summed over many outputs,
    whose L's rounding error, divided by the step, would swamp the difference.

    The random generator is reseeded before every forward so dropout draws the same mask."""
    module.astype(np.float64)
    x = x.astype(np.float64)
    rng = np.random.default_rng(seed + 1000)  # not the stream the test drew x from

    def forward():
        shendu.manual_seed(seed)
        return module(x)

    g = rng.standard_normal(forward().shape)

    def loss():
        return float((forward() * g).sum())

    def compare(analytic, array, what):
        entries = None if samples is None else rng.choice(array.size, min(samples, array.size), replace=False)
        numeric = numerical_grad(loss, array, eps=eps, entries=entries)
        if entries is not None:
            analytic = analytic.reshape(-1)[entries]
            numeric = numeric.reshape(-1)[entries]
        err = rel_error(analytic, numeric)
        assert err < tol, f"dL/d{what}: relative error {err:.2e}"

    forward()
    dx = module.backward(g.copy())
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}
    assert dx.shape == x.shape
    compare(dx, x, "x")
    for name, p in module.named_parameters():
        compare(analytic[name], p.data, name)


def assert_close(actual, expected, rtol=1e-4):
    """Agreement relative to the scale of the expected array (float32 sums reorder freely)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), 1e-6)
    err = np.abs(actual - expected).max(initial=0.0) / scale
    assert err <= rtol, f"max error {err:.2e} of scale {scale:.3g} exceeds {rtol:.0e}"


def assert_matches_torch(module, reference, x, seed=0):
    """One forward and backward pass of a shendu module and its PyTorch twin (same weights, same
    parameter names) on x (float32, or float64 where rounding must not count): outputs, dL/dx,
    every parameter's gradient and every buffer (BatchNorm's running statistics) agree."""
    import torch

    xt = torch.tensor(x, requires_grad=True)
    y, yt = module(x), reference(xt)
    assert_close(y, yt.detach().numpy())
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    yt.backward(torch.tensor(dy))
    assert_close(module.backward(dy), xt.grad.numpy())
    grads = dict(reference.named_parameters())
    for name, p in module.named_parameters():
        assert_close(p.grad, grads[name].grad.numpy())
    for name, buffer in module.named_buffers():
        assert_close(buffer, reference.state_dict()[name].numpy())
