"""The textbook kernels (kernels/textbook.py) against float64 definitions written here with NumPy,
and every fast kernel (kernels.cpu, and kernels.cuda where numba-cuda is installed) against the
textbook kernel it equals: float64 to 1e-12, float32 within rounding on a network's shapes."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from shendu import kernels
from shendu.kernels import cpu, pointwise
from shendu.kernels import textbook as tb

CONV_CASES = [  # (n, h, w, c, o, k, stride, pad): kernel sizes 1, 3, 5, strides 1-3, pads 0-2
    (2, 5, 5, 1, 2, 3, 1, 0),
    (3, 7, 6, 3, 4, 3, 1, 1),
    (2, 9, 8, 2, 3, 3, 2, 1),
    (1, 8, 11, 4, 5, 5, 3, 2),
    (2, 6, 7, 3, 2, 1, 1, 0),
    (1, 7, 9, 2, 3, 1, 2, 2),  # a 1 × 1 kernel in 2 of padding: the border is the bias alone
    (2, 7, 7, 2, 3, 3, 1, 2),  # DeepConvNet's padding 2
    (2, 11, 9, 3, 5, 5, 2, 1),
    (1, 6, 5, 2, 17, 3, 3, 0),  # more output channels than the fast kernel's 16-wide tile
    (3, 1, 1, 5, 17, 3, 1, 1),  # a 1 × 1 map: only the kernel's centre meets the image
    (2, 2, 3, 3, 6, 5, 1, 2),  # a 2 × 3 map: the kernel's outer rows never meet it
]
POOL_CASES = [  # (n, h, w, c, k, stride, pad)
    (2, 6, 6, 3, 2, 2, 0),
    (1, 7, 5, 2, 3, 2, 1),
    (2, 5, 5, 1, 3, 1, 1),
    (1, 9, 8, 4, 2, 1, 0),
    (2, 11, 9, 3, 5, 3, 2),
    (1, 7, 6, 2, 1, 1, 0),
    (2, 8, 7, 3, 3, 3, 1),
]


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _ties(*shape, seed=0, dtype=np.float64):
    """Values from {0, 1, 2}: windows with several maxima."""
    return np.random.default_rng(seed).integers(0, 3, shape).astype(dtype)


def _out(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def _pad(x, pad, fill=0.0):
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)


def _grid(a, u, v, stride, oh, ow):
    """The oh × ow grid a[:, i·stride + u, j·stride + v] (a view): tap (u, v) of every window."""
    return a[:, u:u + stride * (oh - 1) + 1:stride, v:v + stride * (ow - 1) + 1:stride]


# -- float64 definitions, written with NumPy ---------------------------------------------------
def conv_definition(x, w, b, stride, pad):
    """Σ over the taps (u, v) of the padded input's grid under that tap times w[:, :, u, v]ᵀ."""
    o, _, kh, kw = w.shape
    oh, ow = _out(x.shape[1], kh, stride, pad), _out(x.shape[2], kw, stride, pad)
    xp = _pad(x, pad)
    y = np.zeros((x.shape[0], oh, ow, o)) + (0 if b is None else b)
    for u in range(kh):
        for v in range(kw):
            y += _grid(xp, u, v, stride, oh, ow) @ w[:, :, u, v].T
    return y


def conv_backward_definition(dy, x, w, stride, pad):
    """The adjoints of conv_definition's sum, tap by tap: dx, dw, db."""
    oh, ow = dy.shape[1:3]
    h, wd = x.shape[1:3]
    xp, dxp, dw = _pad(x, pad), np.zeros(_pad(x, pad).shape), np.zeros(w.shape)
    for u in range(w.shape[2]):
        for v in range(w.shape[3]):
            _grid(dxp, u, v, stride, oh, ow)[...] += dy @ w[:, :, u, v]
            dw[:, :, u, v] = np.einsum("nijo,nijc->oc", dy, _grid(xp, u, v, stride, oh, ow))
    return dxp[:, pad:pad + h, pad:pad + wd], dw, dy.sum(axis=(0, 1, 2))


def _windows(x, k, stride, pad, fill):
    """(N, OH, OW, C, k·k): each window's cells, tap (a, b) at a·k + b."""
    win = sliding_window_view(_pad(x, pad, fill), (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return win.reshape(win.shape[:4] + (k * k,))


def maxpool_definition(x, k, stride, pad):
    """The window maxima and where the first of each lies (r·W + s)."""
    win = _windows(x, k, stride, pad, -np.inf)
    first = win.argmax(axis=4)
    oh, ow = first.shape[1:3]
    r = np.arange(oh)[:, None, None] * stride + first // k - pad
    s = np.arange(ow)[:, None] * stride + first % k - pad
    return win.max(axis=4), r * x.shape[2] + s


def maxpool_backward_definition(dy, arg, x_shape):
    dx = np.zeros(x_shape)
    img, ch = np.arange(dy.shape[0])[:, None, None, None], np.arange(dy.shape[3])
    np.add.at(dx, (img, arg // x_shape[2], arg % x_shape[2], ch), dy)
    return dx


def avgpool_definition(x, k, stride, pad):
    return _windows(x, k, stride, pad, 0.0).mean(axis=4)


def avgpool_backward_definition(dy, k, stride, pad, x_shape):
    n, h, w, c = x_shape
    dxp = np.zeros((n, h + 2 * pad, w + 2 * pad, c))
    for a in range(k):
        for b in range(k):
            _grid(dxp, a, b, stride, dy.shape[1], dy.shape[2])[...] += dy / k ** 2
    return dxp[:, pad:pad + h, pad:pad + w]


def _conv_args(n, h, w, c, o, k, dtype=np.float64, seed=0):
    x = _rand(n, h, w, c, seed=seed, dtype=dtype)
    wt = (_rand(o, c, k, k, seed=seed + 1) * np.sqrt(2 / (c * k * k))).astype(dtype)  # He
    return x, wt, _rand(o, seed=seed + 2, dtype=dtype)


def _pool_outputs(x, k, stride, pad):
    n, h, w, c = x.shape
    shape = (n, _out(h, k, stride, pad), _out(w, k, stride, pad), c)
    return np.full(shape, np.nan, x.dtype), np.full(shape, -1, np.int32)


def _same(got, want, tol=1e-12):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# -- 1. the textbook kernels against the definitions --------------------------------------------
def test_convolution_is_a_correlation_by_hand():
    # y[i, j] = x[i, j] − x[i + 1, j + 1] + 10: the kernel is not flipped
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    w = np.array([[1.0, 0.0], [0.0, -1.0]]).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(tb.conv_forward(x, w, np.array([10.0]), 1, 0).ravel(), [6] * 4)
    y = tb.conv_forward(x, w, None, 2, 1)  # windows at rows and columns −1 and 1
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, 5 - 9]])


@pytest.mark.parametrize("n,h,w,c,o,k,s,p", CONV_CASES)
def test_textbook_convolution_matches_its_definition(n, h, w, c, o, k, s, p):
    x, wt, b = _conv_args(n, h, w, c, o, k)
    y = tb.conv_forward(x, wt, b, s, p)
    _same(y, conv_definition(x, wt, b, s, p))
    _same(tb.conv_forward(x, wt, None, s, p), conv_definition(x, wt, None, s, p))
    assert (y < 0).any()
    _same(tb.conv_forward(x, wt, b, s, p, relu=True), np.maximum(y, 0))
    dy = _rand(*y.shape, seed=7)
    dx, dw, db = tb.conv_backward(dy, x, wt, s, p)
    for got, want in zip((dx, dw, db), conv_backward_definition(dy, x, wt, s, p)):
        _same(got, want)
    no_dx = tb.conv_backward(dy, x, wt, s, p, input_grad=False)
    assert no_dx[0] is None
    _same(no_dx[1], dw)
    _same(no_dx[2], db)


def test_textbook_convolution_gradients_are_derivatives():
    # L = Σ y · dy is linear in x, w and b: central differences are exact but for rounding
    x, wt, b = _conv_args(1, 5, 4, 2, 3, 3)
    dy = _rand(1, 3, 2, 3, seed=7)  # y: 3 × 2 pixels of 3 channels

    def loss(x, wt, b):
        return (tb.conv_forward(x, wt, b, 2, 1) * dy).sum()

    grads = tb.conv_backward(dy, x, wt, 2, 1)
    for which, (value, grad) in enumerate(zip((x, wt, b), grads)):
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            args = [x, wt, b]
            for step in (1.0, -1.0):
                args[which] = value.copy()
                args[which][index] += step
                numeric[index] += step * loss(*args) / 2
        np.testing.assert_allclose(grad, numeric, rtol=1e-9, atol=1e-9)


def test_pooling_by_hand():
    x = np.array([[1.0, 5.0, 2.0], [4.0, 3.0, 5.0], [0.0, 6.0, -1.0]]).reshape(1, 3, 3, 1)
    y, arg = _pool_outputs(x, 2, 2, 1)  # windows at rows and columns −1 and 1
    tb.maxpool_forward(x, 2, 2, 1, y, arg)
    np.testing.assert_array_equal(y[0, :, :, 0], [[1, 5], [4, 6]])
    np.testing.assert_array_equal(arg[0, :, :, 0], [[0, 1], [3, 7]])
    tb.avgpool_forward(x, 2, 2, 1, y)  # padding counts as zeros
    np.testing.assert_array_equal(y[0, :, :, 0], [[0.25, 1.75], [1.0, 3.25]])


@pytest.mark.parametrize("values", [_rand, _ties])
@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_textbook_maxpool_matches_its_definition(values, n, h, w, c, k, s, p):
    x = values(n, h, w, c)
    y, arg = _pool_outputs(x, k, s, p)
    tb.maxpool_forward(x, k, s, p, y, arg)
    y_def, arg_def = maxpool_definition(x, k, s, p)
    np.testing.assert_array_equal(y, y_def)
    np.testing.assert_array_equal(arg, arg_def)  # ties: the first maximum, row by row
    y_only = np.full_like(y, np.nan)
    tb.maxpool_forward(x, k, s, p, y_only, None)
    np.testing.assert_array_equal(y_only, y_def)
    dy = _rand(*y.shape, seed=1)
    dx = np.full_like(x, np.nan)
    tb.maxpool_backward(dy, arg_def.astype(np.int32), dx)
    _same(dx, maxpool_backward_definition(dy, arg_def, x.shape))


@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_textbook_avgpool_matches_its_definition(n, h, w, c, k, s, p):
    x = _rand(n, h, w, c)
    y, _ = _pool_outputs(x, k, s, p)
    tb.avgpool_forward(x, k, s, p, y)
    _same(y, avgpool_definition(x, k, s, p))
    dy = _rand(*y.shape, seed=1)
    dx = np.full_like(x, np.nan)
    tb.avgpool_backward(dy, k, s, p, dx)
    _same(dx, avgpool_backward_definition(dy, k, s, p, x.shape))


def test_textbook_convolution_and_pooling_match_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, wt, b = _conv_args(2, 9, 8, 3, 4, 3)
    nchw = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw, tb_ = torch.tensor(wt, requires_grad=True), torch.tensor(b, requires_grad=True)
    out = F.conv2d(nchw, tw, tb_, stride=2, padding=2)
    y = tb.conv_forward(x, wt, b, 2, 2)
    _same(y, out.detach().numpy().transpose(0, 2, 3, 1))
    dy = _rand(*y.shape, seed=7)
    out.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    dx, dw, db = tb.conv_backward(dy, x, wt, 2, 2)
    _same(dx, nchw.grad.numpy().transpose(0, 2, 3, 1))
    _same(dw, tw.grad.numpy())
    _same(db, tb_.grad.numpy())
    for k, s, p in [(3, 2, 1), (2, 1, 0)]:
        y, _ = _pool_outputs(x, k, s, p)
        tb.maxpool_forward(x, k, s, p, y, None)
        want = F.max_pool2d(nchw.detach(), k, s, p).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(y, want)
        tb.avgpool_forward(x, k, s, p, y)
        want = F.avg_pool2d(nchw.detach(), k, s, p, count_include_pad=True)
        _same(y, want.numpy().transpose(0, 2, 3, 1))


def test_textbook_relu_matches_its_definition():
    x = _rand(2, 3, 4, 5)
    x[0, 0, 0, :5] = [0, np.nan, np.inf, -np.inf, -0.0]
    view = x.transpose(0, 3, 1, 2)  # an NCHW view of NHWC memory, as the layers pass
    y = tb.relu_forward(view)
    np.testing.assert_array_equal(y, np.maximum(view, 0))  # NaN stays NaN
    dy = _rand(*view.shape, seed=1)
    np.testing.assert_array_equal(tb.relu_backward(dy, y), np.where(y > 0, dy, 0))
    np.testing.assert_array_equal(tb.relu_backward(dy, view), np.where(view > 0, dy, 0))


@pytest.mark.parametrize("m,c", [(1, 3), (7, 5), (300, 16)])
def test_textbook_batchnorm_matches_its_definition(m, c):
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, c)) * 3 + 100  # a mean far from 0
    mean, var = tb.batch_stats(x)
    _same(mean, x.mean(axis=0))
    _same(var, x.var(axis=0), tol=1e-10)
    shift, b = rng.standard_normal(c), rng.standard_normal((m, c))
    s1, s2 = tb.column_sums(x, b, shift)
    _same(s1, x.sum(axis=0))
    _same(s2, ((x - shift) * b).sum(axis=0), tol=1e-10)
    inv_std, gamma, beta = 1 / np.sqrt(var + 1e-5), rng.standard_normal(c), rng.standard_normal(c)
    xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    y = np.empty_like(x)
    tb.normalize(x, mean, inv_std, gamma, beta, False, y)
    _same(y, gamma * xhat + beta, tol=1e-9)
    rectified = np.empty_like(x)
    tb.normalize(x, mean, inv_std, gamma, beta, True, rectified)
    assert m == 1 or ((y < 0).any() and (y > 0).any())  # both sides of the ReLU tried
    _same(rectified, np.maximum(y, 0))
    # BatchNorm's dL/dx, μ and σ² depending on x: with g the gradient before the ReLU (dy where
    # y > 0 with relu, dy without) and dx̂ = γ g, dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)) / σ
    dy = rng.standard_normal((m, c))
    for relu, g in ((False, dy), (True, np.where(y > 0, dy, 0))):
        s1, s2 = tb.grad_sums(dy, x, mean, inv_std, gamma, beta, relu)
        _same(s1, g.sum(axis=0))
        _same(s2, (g * xhat).sum(axis=0), tol=1e-9)
        dx = np.empty_like(x)
        tb.normalize_backward(dy, x, mean, inv_std, s1 / m, s2 / m, gamma, beta, relu, dx)
        dxhat = gamma * g
        _same(dx, (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) * inv_std,
              tol=1e-9)


# -- 2. the fast CPU kernels against the textbook kernels ----------------------------------------
def _backward_equals_the_textbook(dy, x, wt, s, p, agree):
    """cpu.conv_backward's dx, dw and db, and dw and db without dx, agree with the textbook's."""
    want = tb.conv_backward(dy, x, wt, s, p)
    for got, expected in zip(cpu.conv_backward(dy, x, wt, s, p), want):
        agree(got, expected)
    dx, dw, db = cpu.conv_backward(dy, x, wt, s, p, input_grad=False)
    assert dx is None
    agree(dw, want[1])
    agree(db, want[2])


RUNGS = [name for name in kernels.LADDER if name != "textbook"]  # the ladder's other kernels


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("n,h,w,c,o,k,s,p", CONV_CASES)
def test_fast_convolution_equals_the_textbook_in_float64(rung, n, h, w, c, o, k, s, p):
    x, wt, b = _conv_args(n, h, w, c, o, k, seed=3)
    with kernels.use(rung):
        for bias in (b, None):
            for relu in (False, True):
                _same(cpu.conv_forward(x, wt, bias, s, p, relu=relu),
                      tb.conv_forward(x, wt, bias, s, p, relu))
        _backward_equals_the_textbook(_rand(n, _out(h, k, s, p), _out(w, k, s, p), o, seed=4),
                                      x, wt, s, p, _same)


@pytest.mark.parametrize("path", ["direct", "patches"])
@pytest.mark.parametrize("n,h,w,c,o,k,s,p", CONV_CASES)
def test_both_ways_of_the_fast_convolution_equal_the_textbook(monkeypatch, path, n, h, w, c, o, k,
                                                           s, p):
    """The kernels take the patch matrix on small maps and the direct loops elsewhere: each way,
    forced on every case, gives the textbook's outputs and gradients."""
    from shendu.kernels import conv
    limit = 10 ** 9 if path == "patches" else 0
    for name in ("PATCH_FWD", "PATCH_DW", "PATCH_DX"):
        monkeypatch.setattr(conv, name, limit)
    x, wt, b = _conv_args(n, h, w, c, o, k, seed=7)
    for relu in (False, True):
        _same(cpu.conv_forward(x, wt, b, s, p, relu=relu), tb.conv_forward(x, wt, b, s, p, relu))
    _backward_equals_the_textbook(_rand(n, _out(h, k, s, p), _out(w, k, s, p), o, seed=8), x,
                                  wt, s, p, _same)


@pytest.mark.parametrize("values", [_rand, _ties])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_fast_pooling_equals_the_textbook(values, dtype, n, h, w, c, k, s, p):
    x = values(n, h, w, c, seed=5, dtype=dtype)
    (y, arg), (y_tb, arg_tb) = _pool_outputs(x, k, s, p), _pool_outputs(x, k, s, p)
    cpu.maxpool_forward(x, k, s, p, y, arg)
    tb.maxpool_forward(x, k, s, p, y_tb, arg_tb)
    np.testing.assert_array_equal(y, y_tb)  # a maximum is one of the values: exact
    np.testing.assert_array_equal(arg, arg_tb)
    cpu.maxpool_forward(x, k, s, p, y, None)
    np.testing.assert_array_equal(y, y_tb)
    dy = _rand(*y.shape, seed=6, dtype=dtype)
    dx, dx_tb = np.full_like(x, np.nan), np.full_like(x, np.nan)
    cpu.maxpool_backward(dy, arg, dx)
    tb.maxpool_backward(dy, arg_tb, dx_tb)
    _same(dx, dx_tb)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    cpu.avgpool_forward(x, k, s, p, y)
    tb.avgpool_forward(x, k, s, p, y_tb)
    _same(y, y_tb, tol)
    cpu.avgpool_backward(dy, k, s, p, dx)
    tb.avgpool_backward(dy, k, s, p, dx_tb)
    _same(dx, dx_tb, tol)


LAYOUTS = {  # how the layers hand ReLU its input: images as NCHW views of NHWC memory, or rows
    "nchw view": lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
    "contiguous": np.ascontiguousarray,
    "rows": lambda a: np.ascontiguousarray(a.reshape(a.shape[0], -1)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_relu_equals_the_textbook(layout, dtype):
    x = _rand(2, 3, 4, 5, dtype=dtype)
    x[0, 0, 0, :5] = [0, np.nan, np.inf, -np.inf, -0.0]
    x, dy = LAYOUTS[layout](x), LAYOUTS[layout](_rand(2, 3, 4, 5, seed=1, dtype=dtype))
    y = cpu.relu_forward(x)
    np.testing.assert_array_equal(y, tb.relu_forward(x))
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), tb.relu_backward(dy, y))
    flat, out = x.ravel(), np.empty(x.size, dtype)  # the kernel under cpu.relu_forward
    pointwise.relu(flat, out)
    np.testing.assert_array_equal(out, tb.relu_forward(flat))
    pointwise.relu_backward(dy.ravel(), flat, out)
    np.testing.assert_array_equal(out, tb.relu_backward(dy.ravel(), flat))


def _batchnorm_both(x, dy, rng, tol):
    """Every BatchNorm kernel of kernels.cpu against kernels.textbook on x and dy (M, C)."""
    c = x.shape[1]
    for got, want in zip(cpu.batch_stats(x), tb.batch_stats(x)):
        _same(got, want, tol=1e-10)
    mean, var = tb.batch_stats(x)
    shift = rng.standard_normal(c)
    for got, want in zip(cpu.column_sums(dy, x, shift), tb.column_sums(dy, x, shift)):
        _same(got, want, tol=1e-10)
    dtype = x.dtype
    mean, inv_std = mean.astype(dtype), (1 / np.sqrt(var + 1e-5)).astype(dtype)
    gamma, beta = rng.standard_normal((2, c)).astype(dtype)
    for relu in (False, True):
        y, y_tb = np.full_like(x, np.nan), np.full_like(x, np.nan)
        cpu.normalize(x, mean, inv_std, gamma, beta, relu, y)
        tb.normalize(x, mean, inv_std, gamma, beta, relu, y_tb)
        _same(y, y_tb, tol)
        stats = (x, mean, inv_std, gamma, beta, relu)
        sums = tb.grad_sums(dy, *stats)
        for got, want in zip(cpu.grad_sums(dy, *stats), sums):
            _same(got, want, tol=1e-10)
        means = [(s / len(x)).astype(dtype) for s in sums]
        dx, dx_tb = np.full_like(x, np.nan), np.full_like(x, np.nan)
        cpu.normalize_backward(dy, x, mean, inv_std, *means, gamma, beta, relu, dx)
        tb.normalize_backward(dy, x, mean, inv_std, *means, gamma, beta, relu, dx_tb)
        _same(dx, dx_tb, tol)


@pytest.mark.parametrize("m,c", [(1, 3), (7, 5), (2 * pointwise.BLOCK + 13, 16)])
def test_fast_batchnorm_equals_the_textbook_in_float64(m, c):
    rng = np.random.default_rng(m)
    _batchnorm_both(rng.standard_normal((m, c)) * 3 + 100, rng.standard_normal((m, c)), rng,
                    1e-12)


# float32 on a network's shapes: (batch, side, in channels, out channels, kernel, stride, pad)
NETWORK_CONVS = [
    (8, 28, 1, 16, 3, 1, 1),    # DeepConvNet's first layer
    (8, 28, 16, 32, 3, 1, 1),
    (8, 14, 32, 32, 3, 1, 2),   # its padding 2
    (8, 28, 16, 32, 5, 2, 2),
]


def _close32(got, want):
    """float32 within rounding: 1e-5 of the output's scale."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("n,h,c,o,k,s,p", NETWORK_CONVS)
def test_fast_convolution_equals_the_textbook_in_float32(rung, n, h, c, o, k, s, p):
    x, wt, b = _conv_args(n, h, h, c, o, k, dtype=np.float32, seed=8)
    y = tb.conv_forward(x, wt, b, s, p)
    with kernels.use(rung):
        _close32(cpu.conv_forward(x, wt, b, s, p), y)
        _close32(cpu.conv_forward(x, wt, b, s, p, relu=True),
                 tb.conv_forward(x, wt, b, s, p, True))
        _backward_equals_the_textbook(_rand(*y.shape, seed=9, dtype=np.float32), x, wt, s, p,
                                      _close32)


def test_fast_pooling_relu_and_batchnorm_equal_the_textbook_in_float32():
    x = np.ascontiguousarray(_rand(8, 32, 28, 28, seed=10, dtype=np.float32).transpose(0, 2, 3, 1))
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        (y, arg), (y_tb, arg_tb) = _pool_outputs(x, k, s, p), _pool_outputs(x, k, s, p)
        cpu.maxpool_forward(x, k, s, p, y, arg)
        tb.maxpool_forward(x, k, s, p, y_tb, arg_tb)
        np.testing.assert_array_equal(y, y_tb)
        np.testing.assert_array_equal(arg, arg_tb)
        dy = _rand(*y.shape, seed=11, dtype=np.float32)
        dx, dx_tb = np.empty_like(x), np.empty_like(x)
        cpu.maxpool_backward(dy, arg, dx)
        tb.maxpool_backward(dy, arg_tb, dx_tb)
        np.testing.assert_array_equal(dx, dx_tb)
        cpu.avgpool_forward(x, k, s, p, y)
        tb.avgpool_forward(x, k, s, p, y_tb)
        _close32(y, y_tb)
        cpu.avgpool_backward(dy, k, s, p, dx)
        tb.avgpool_backward(dy, k, s, p, dx_tb)
        _close32(dx, dx_tb)
    view = x.transpose(0, 3, 1, 2)  # NCHW, as the layers see it
    y = cpu.relu_forward(view)
    np.testing.assert_array_equal(y, tb.relu_forward(view))
    dy = _rand(*view.shape, seed=12, dtype=np.float32)
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), tb.relu_backward(dy, y))
    rows = x.reshape(-1, x.shape[3])
    _batchnorm_both(rows, _rand(*rows.shape, seed=13, dtype=np.float32),
                    np.random.default_rng(0), 1e-5)


# -- 3. the CUDA kernels against the textbook kernels (numba's simulator, or a GPU) -------------
@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("numba_cuda")
    import warnings
    from numba.core.errors import NumbaWarning
    with warnings.catch_warnings():  # in the simulator, numba.cuda.random compiles in object mode
        warnings.simplefilter("ignore", NumbaWarning)
        from shendu.kernels import cuda
    return cuda


def _device(gpu, *arrays):
    return [gpu.cuda.to_device(np.ascontiguousarray(a)) for a in arrays]


def _host(a):
    return a.copy_to_host()


@pytest.mark.parametrize("n,h,w,c,o,k,s,p", [(2, 5, 4, 2, 3, 3, 2, 1), (1, 5, 6, 2, 3, 3, 1, 2)])
def test_cuda_convolution_equals_the_textbook(gpu, n, h, w, c, o, k, s, p):
    x, wt, b = _conv_args(n, h, w, c, o, k, dtype=np.float32, seed=14)
    x_d, w_d, b_d = _device(gpu, x, wt, b)
    for bias, relu in [(b, False), (None, True)]:
        got = gpu.conv_forward(x_d, w_d, None if bias is None else b_d, s, p, relu=relu)
        _close32(_host(got), tb.conv_forward(x, wt, bias, s, p, relu))
    dy = _rand(n, _out(h, k, s, p), _out(w, k, s, p), o, seed=15, dtype=np.float32)
    want = tb.conv_backward(dy, x, wt, s, p)
    for input_grad in (True, False):
        got = gpu.conv_backward(*_device(gpu, dy), x_d, w_d, s, p, input_grad=input_grad)
        assert (got[0] is None) != input_grad
        for g, expected in zip(got, want):
            if g is not None:
                _close32(_host(g), expected)


@pytest.mark.parametrize("n,h,w,c,k,s,p", [(2, 6, 5, 3, 2, 2, 0), (1, 7, 6, 3, 3, 2, 1),
                                           (1, 7, 7, 2, 5, 3, 2)])
def test_cuda_pooling_equals_the_textbook(gpu, n, h, w, c, k, s, p):
    x = _ties(n, h, w, c, seed=16, dtype=np.float32)
    y_tb, arg_tb = _pool_outputs(x, k, s, p)
    tb.maxpool_forward(x, k, s, p, y_tb, arg_tb)
    (x_d,) = _device(gpu, x)
    y, arg = gpu.empty(y_tb.shape, np.float32), gpu.empty(y_tb.shape, np.int32)
    gpu.maxpool_forward(x_d, k, s, p, y, arg)
    np.testing.assert_array_equal(_host(y), y_tb)
    np.testing.assert_array_equal(_host(arg), arg_tb)
    dy = _rand(*y_tb.shape, seed=17, dtype=np.float32)
    (dy_d,) = _device(gpu, dy)
    dx, dx_tb = gpu.empty(x.shape, np.float32), np.empty_like(x)
    gpu.maxpool_backward(dy_d, arg, dx)
    tb.maxpool_backward(dy, arg_tb, dx_tb)
    _close32(_host(dx), dx_tb)
    gpu.avgpool_forward(x_d, k, s, p, y)
    tb.avgpool_forward(x, k, s, p, y_tb)
    _close32(_host(y), y_tb)
    gpu.avgpool_backward(dy_d, k, s, p, dx)
    tb.avgpool_backward(dy, k, s, p, dx_tb)
    _close32(_host(dx), dx_tb)


def test_cuda_relu_and_batchnorm_equal_the_textbook(gpu):
    x, dy = _rand(2, 3, 5, 7, dtype=np.float32), _rand(2, 3, 5, 7, seed=1, dtype=np.float32)
    x[0, 0, 0, :3] = [0, np.inf, -np.inf]
    x_d, dy_d = _device(gpu, x, dy)
    y = gpu.relu_forward(x_d)
    np.testing.assert_array_equal(_host(y), tb.relu_forward(x))
    np.testing.assert_array_equal(_host(gpu.relu_backward(dy_d, y)), tb.relu_backward(dy, x))
    rng = np.random.default_rng(18)
    m, c = 37, 5
    x, dy = (rng.standard_normal((2, m, c)) * 3 + 100).astype(np.float32)
    x_d, dy_d = _device(gpu, x, dy)
    for got, want in zip(gpu.batch_stats(x_d), tb.batch_stats(x)):
        _same(_host(got), want, tol=1e-10)
    shift = rng.standard_normal(c)
    for got, want in zip(gpu.column_sums(dy_d, x_d, *_device(gpu, shift)),
                         tb.column_sums(dy, x, shift)):
        _same(_host(got), want, tol=1e-10)
    mean, var = tb.batch_stats(x)
    mean, inv_std = mean.astype(np.float32), (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    gamma, beta = rng.standard_normal((2, c)).astype(np.float32)
    for relu in (False, True):
        y, y_d = np.empty_like(x), gpu.empty((m, c), np.float32)
        tb.normalize(x, mean, inv_std, gamma, beta, relu, y)
        stats_d = _device(gpu, mean, inv_std, gamma, beta)
        gpu.normalize(x_d, *stats_d, relu, y_d)
        _close32(_host(y_d), y)
        sums = tb.grad_sums(dy, x, mean, inv_std, gamma, beta, relu)
        for got, want in zip(gpu.grad_sums(dy_d, x_d, *stats_d, relu), sums):
            _same(_host(got), want, tol=1e-10)
        means = [(s / m).astype(np.float32) for s in sums]
        dx, dx_d = np.empty_like(x), gpu.empty((m, c), np.float32)
        tb.normalize_backward(dy, x, mean, inv_std, *means, gamma, beta, relu, dx)
        mean_d, inv_std_d, gamma_d, beta_d = stats_d
        gpu.normalize_backward(dy_d, x_d, mean_d, inv_std_d, *_device(gpu, *means), gamma_d,
                               beta_d, relu, dx_d)
        _close32(_host(dx_d), dx)


# -- the ladder: one network on each rung ------------------------------------------------------
def _one_step(x, t):
    """DeepConvNet's loss after one Adam step on (x, t), from seed 0, and the step's gradient of
    the first convolution."""
    from shendu import models, nn, optim
    from shendu.rng import manual_seed
    manual_seed(0)
    model, loss_fn = models.DeepConvNet(), nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters())
    loss_fn(model(x), t)
    nn.data_backward(model, loss_fn.backward())
    first = model.parameters()[0].grad.copy()
    opt.step()
    model.eval()
    with nn.no_grad():
        return loss_fn(model(x), t), first


def test_a_network_computes_the_same_on_every_rung():
    x = np.random.default_rng(13).random((6, 1, 28, 28), np.float32)
    t = np.arange(6) % 10
    assert kernels.in_use() == "tiled"
    want_loss, want_grad = _one_step(x, t)
    for rung in kernels.LADDER:
        with kernels.use(rung):
            assert kernels.in_use() == rung
            loss, grad = _one_step(x, t)
        assert kernels.in_use() == "tiled"  # the block's end restores the rung before
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        _close32(grad, want_grad)


def test_use_switches_until_told_otherwise_and_refuses_unknown_names():
    from shendu.errors import ShenduError
    try:
        kernels.use("textbook")
        assert kernels.in_use() == "textbook"
        assert cpu.convolution is tb
    finally:
        kernels.use("tiled")
    with pytest.raises(ShenduError, match="choose one of textbook, im2col, reordered, tiled"):
        kernels.use("winograd")
    assert kernels.in_use() == "tiled"
