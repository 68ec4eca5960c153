"""The CUDA kernels against the CPU kernels, the NumPy references, the loss and the optimizers.

They run in numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless it is
set), and on a GPU with NUMBA_ENABLE_CUDASIM=0. The simulator runs every GPU thread as a Python
thread, so the shapes are tiny; odd, so that tiles have edges, and in float32, as on a GPU.
"""
import warnings

import numpy as np
import pytest

pytest.importorskip("numba_cuda")
from numba import cuda  # noqa: E402
from numba.core.errors import NumbaWarning  # noqa: E402

import shendu  # noqa: E402
from shendu import nn, optim  # noqa: E402
from shendu.kernels import conv, norm, pool  # noqa: E402

with warnings.catch_warnings():  # in the simulator, numba.cuda.random compiles in object mode
    warnings.simplefilter("ignore", NumbaWarning)
    from shendu.kernels import cuda as gpu


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _host(a):
    return a.copy_to_host()


def test_available():
    assert gpu.available()


# -- convolution ------------------------------------------------------------------------------
CONV_CASES = [  # (n, h, w, c, o, k, stride, pad)
    (2, 5, 5, 3, 4, 3, 1, 0),
    (2, 7, 6, 3, 4, 3, 2, 1),
    (2, 6, 5, 3, 4, 1, 2, 0),
    (1, 6, 7, 2, 3, 5, 2, 2),
    (1, 5, 6, 2, 3, 3, 1, 2),  # DeepConvNet's padding 2
]


@pytest.mark.parametrize("n,h,w,c,o,k,s,p", CONV_CASES)
def test_conv_forward_and_backward_match_the_cpu_kernels(n, h, w, c, o, k, s, p):
    x, wt, b = _rand(n, h, w, c), _rand(o, c, k, k, seed=1), _rand(o, seed=2)
    f64 = np.float64
    y = gpu.conv_forward(cuda.to_device(x), cuda.to_device(wt), cuda.to_device(b), s, p)
    ref = conv.conv_forward(x.astype(f64), wt.astype(f64), b.astype(f64), s, p)
    np.testing.assert_allclose(_host(y), ref, rtol=1e-5, atol=1e-5)
    dy = _rand(*ref.shape, seed=3)
    dx, dw, db = gpu.conv_backward(cuda.to_device(dy), cuda.to_device(x), cuda.to_device(wt), s, p)
    dx_ref, dw_ref, db_ref = conv.conv_backward(dy.astype(f64), x.astype(f64), wt.astype(f64), s, p)
    np.testing.assert_allclose(_host(dx), dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_host(dw), dw_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_host(db), db_ref, rtol=1e-5, atol=1e-5)


def test_conv_with_relu_rectifies_the_output():
    x, wt, b = _rand(2, 5, 5, 2), _rand(3, 2, 3, 3, seed=1), _rand(3, seed=2)
    y = gpu.conv_forward(cuda.to_device(x), cuda.to_device(wt), cuda.to_device(b), 1, 1, relu=True)
    ref = conv.conv_forward(x, wt, b, 1, 1)
    assert (ref < 0).any()
    np.testing.assert_allclose(_host(y), np.maximum(ref, 0), rtol=1e-5, atol=1e-5)


def test_conv_without_bias_and_without_input_gradient():
    x, wt = _rand(1, 5, 5, 2), _rand(3, 2, 3, 3, seed=1)
    y = gpu.conv_forward(cuda.to_device(x), cuda.to_device(wt), None, 1, 1)
    np.testing.assert_allclose(_host(y), conv.conv_forward(x, wt, None, 1, 1), rtol=1e-5, atol=1e-5)
    dy = _rand(*y.shape, seed=2)
    dx, dw, _ = gpu.conv_backward(cuda.to_device(dy), cuda.to_device(x), cuda.to_device(wt), 1, 1,
                                  input_grad=False)
    assert dx is None
    np.testing.assert_allclose(_host(dw), conv.conv_backward(dy, x, wt, 1, 1)[1], rtol=1e-5,
                               atol=1e-5)


def test_weight_gradient_sums_slices_of_pixels(monkeypatch):
    # more output pixels than one slice (norm.BLOCK of them): slices summed in order
    x, wt = _rand(2, 7, 6, 2), _rand(3, 2, 3, 3, seed=1)
    dy = _rand(2, 7, 6, 3, seed=2)
    monkeypatch.setattr(gpu, "BLOCK", 20)  # read when the simulator runs the kernel
    _, dw, db = gpu.conv_backward(cuda.to_device(dy), cuda.to_device(x), cuda.to_device(wt), 1, 1,
                                  input_grad=False)
    _, dw_ref, db_ref = conv.conv_backward(dy.astype(np.float64), x.astype(np.float64),
                                           wt.astype(np.float64), 1, 1)
    np.testing.assert_allclose(_host(dw), dw_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_host(db), db_ref, rtol=1e-5, atol=1e-5)


# -- matrix product ---------------------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (17, 19, 18)])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_matches_numpy(m, k, n, ta, tb):
    a, b = _rand(m, k), _rand(k, n, seed=1)
    a_stored, b_stored = (a.T.copy() if ta else a), (b.T.copy() if tb else b)
    c = gpu.matmul(cuda.to_device(a_stored), cuda.to_device(b_stored), ta, tb)
    np.testing.assert_allclose(_host(c), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_matmul_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="matmul"):
        gpu.matmul(cuda.to_device(_rand(2, 3)), cuda.to_device(_rand(4, 2)))


# -- pooling ----------------------------------------------------------------------------------
POOL_CASES = [  # (n, h, w, c, k, stride, pad)
    (2, 6, 5, 3, 2, 2, 0),
    (1, 7, 6, 3, 3, 2, 1),
    (2, 5, 5, 3, 3, 1, 1),
    (1, 7, 7, 2, 5, 2, 2),
]


def _pool_output(x, k, s, p):
    n, h, w, c = x.shape
    return (n, conv.out_size(h, k, s, p), conv.out_size(w, k, s, p), c)


@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_maxpool_matches_the_cpu_kernel_and_reference(n, h, w, c, k, s, p):
    # values drawn from {0, 1, 2}: many ties, which go to the first maximum
    x = np.random.default_rng(0).integers(0, 3, (n, h, w, c)).astype(np.float32)
    shape = _pool_output(x, k, s, p)
    y, arg = cuda.device_array(shape, np.float32), cuda.device_array(shape, np.int32)
    gpu.maxpool_forward(cuda.to_device(x), k, s, p, y, arg)
    y_cpu, arg_cpu = np.empty(shape, np.float32), np.empty(shape, np.int32)
    pool.maxpool_forward(x, k, s, p, y_cpu, arg_cpu)
    np.testing.assert_array_equal(_host(y), pool.maxpool_reference(x, k, s, p))
    np.testing.assert_array_equal(_host(arg), arg_cpu)
    dy = _rand(*shape, seed=1)
    dx = cuda.device_array(x.shape, np.float32)
    gpu.maxpool_backward(cuda.to_device(dy), arg, dx)
    np.testing.assert_allclose(_host(dx), pool.maxpool_backward_reference(x, dy, k, s, p),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_avgpool_matches_reference(n, h, w, c, k, s, p):
    x = _rand(n, h, w, c)
    shape = _pool_output(x, k, s, p)
    y = cuda.device_array(shape, np.float32)
    gpu.avgpool_forward(cuda.to_device(x), k, s, p, y)
    np.testing.assert_allclose(_host(y), pool.avgpool_reference(x, k, s, p), rtol=1e-5, atol=1e-6)
    dy = _rand(*shape, seed=1)
    dx = cuda.device_array(x.shape, np.float32)
    gpu.avgpool_backward(cuda.to_device(dy), k, s, p, dx)
    np.testing.assert_allclose(_host(dx), pool.avgpool_backward_reference(x.shape, dy, k, s, p),
                               rtol=1e-5, atol=1e-6)


# -- batch normalisation ----------------------------------------------------------------------
@pytest.mark.parametrize("m,c", [(7, 3), (norm.BLOCK + 5, 3)])  # one block of rows, and two
def test_batchnorm_kernels_match_numpy(m, c):
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, c)) * 3 + 100).astype(np.float32)  # a mean far from 0
    mean, var = gpu.batch_stats(cuda.to_device(x))
    ref_mean, ref_var = norm.batch_stats_reference(x)
    np.testing.assert_allclose(_host(mean), ref_mean, rtol=1e-12)
    np.testing.assert_allclose(_host(var), ref_var, rtol=1e-9)
    inv_std = (1 / np.sqrt(ref_var + 1e-5)).astype(np.float32)
    gamma, beta = rng.standard_normal((2, c)).astype(np.float32)
    mean32 = ref_mean.astype(np.float32)
    xhat = (x - mean32) * inv_std  # float32, as the kernels compute it
    stats = [cuda.to_device(v) for v in (mean32, inv_std, gamma, beta)]
    y = cuda.device_array((m, c), np.float32)
    gpu.normalize(cuda.to_device(x), *stats, False, y)
    np.testing.assert_allclose(xhat, (x - ref_mean) * inv_std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_host(y), xhat * gamma + beta, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal((m, c)).astype(np.float32)
    shift = rng.standard_normal(c)
    s1, s2 = gpu.column_sums(cuda.to_device(dy), cuda.to_device(xhat), cuda.to_device(shift))
    dy64 = dy.astype(np.float64)
    np.testing.assert_allclose(_host(s1), dy64.sum(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(_host(s2), ((dy64 - shift) * xhat).sum(axis=0), rtol=1e-9,
                               atol=1e-9)
    mean_dy = dy64.mean(axis=0).astype(np.float32)
    mean_dy_xhat = (dy64 * xhat).mean(axis=0).astype(np.float32)
    dx = cuda.device_array((m, c), np.float32)
    gpu.normalize_backward(cuda.to_device(dy), cuda.to_device(x), *stats[:2],
                           cuda.to_device(mean_dy), cuda.to_device(mean_dy_xhat), *stats[2:], False,
                           dx)
    ref = norm.normalize_backward_reference(dy, xhat, inv_std, gamma)
    np.testing.assert_allclose(_host(dx), ref, rtol=1e-4, atol=1e-4 * np.abs(gamma * inv_std).max())


# -- element-wise -----------------------------------------------------------------------------
def test_elementwise_kernels_match_numpy():
    x, d = _rand(2, 3, 5, 7), _rand(2, 3, 5, 7, seed=1)
    x[0, 0, 0, :3] = 0  # relu's boundary: no gradient at 0, as x > 0 says
    dx_, dd = cuda.to_device(x), cuda.to_device(d)
    np.testing.assert_array_equal(_host(gpu.relu_forward(dx_)), np.maximum(x, 0))
    np.testing.assert_array_equal(_host(gpu.relu_backward(dd, dx_)), d * (x > 0))
    np.testing.assert_array_equal(_host(gpu.add(dx_, dd)), x + d)
    np.testing.assert_array_equal(_host(gpu.add_relu(dx_, dd)), np.maximum(x + d, 0))
    np.testing.assert_array_equal(_host(gpu.multiply(dx_, dd)), x * d)
    b = _rand(7, seed=2)
    gpu.add_bias(dx_, cuda.to_device(b))
    np.testing.assert_array_equal(_host(dx_), x + b)
    b2 = _rand(2, 7, seed=3)
    np.testing.assert_array_equal(_host(gpu.multiply(cuda.to_device(b2), cuda.to_device(b))),
                                  b2 * b)  # a vector over the last axis
    for axes in [(0, 3, 1, 2), (0, 2, 3, 1), (3, 2, 1, 0)]:
        view = gpu.transpose(dd, axes)
        np.testing.assert_array_equal(_host(gpu.contiguous(view)), d.transpose(axes))
        # element-wise work on a view of permuted strides, and on two layouts at once
        np.testing.assert_array_equal(_host(gpu.contiguous(gpu.relu_forward(view))),
                                      np.maximum(d, 0).transpose(axes))
        np.testing.assert_array_equal(
            _host(gpu.contiguous(gpu.add(view, gpu.contiguous(view)))), 2 * d.transpose(axes))


def test_views_follow_numpy_slicing():
    a = _rand(2, 5, 4, 6)
    da = cuda.to_device(a)
    for index in [np.s_[:, 1:4], np.s_[..., 2:5], np.s_[:, :, ::2, 1::3], np.s_[1:, ::2]]:
        np.testing.assert_array_equal(_host(gpu.contiguous(gpu.view(da, index))), a[index])
    dst = cuda.to_device(np.zeros_like(a))
    gpu.copy_into(gpu.view(dst, np.s_[:, :, ::2, 1::3]), gpu.view(da, np.s_[:, :, 1:3, :2]))
    expected = np.zeros_like(a)
    expected[:, :, ::2, 1::3] = a[:, :, 1:3, :2]
    np.testing.assert_array_equal(_host(dst), expected)
    with pytest.raises(ValueError, match="copy_into"):
        gpu.copy_into(dst, gpu.view(da, np.s_[:1]))


@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaWarning",
                            "ignore:overflow:RuntimeWarning")  # the simulator's uint64 arithmetic
def test_dropout_mask_is_drawn_on_the_device(monkeypatch):
    monkeypatch.setattr(gpu, "RANDOM_STATES", 32)  # the simulator runs a thread per generator
    x = cuda.to_device(np.zeros((64, 33), np.float32))
    shendu.manual_seed(7)
    masks = [_host(gpu.dropout_mask(x, 0.25)) for _ in range(2)]
    for mask in masks:
        assert set(np.unique(mask)) == {np.float32(0), np.float32(1) / np.float32(0.75)}
        assert abs((mask > 0).mean() - 0.75) < 0.03  # 2112 draws: 0.03 is over 3 σ
    assert (masks[0] != masks[1]).any()  # the generators moved on
    shendu.manual_seed(7)  # a new seed: the device's generators are seeded again
    np.testing.assert_array_equal(_host(gpu.dropout_mask(x, 0.25)), masks[0])


# -- loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_the_loss(smoothing):
    logits = _rand(5, 7) * 4
    t = np.array([0, 6, 3, 3, 1])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
    loss, dz = gpu.cross_entropy(cuda.to_device(logits), cuda.to_device(t), smoothing)
    assert isinstance(loss, float)
    assert loss == pytest.approx(loss_fn(logits, t), rel=1e-5)
    np.testing.assert_allclose(_host(dz), loss_fn.backward(), rtol=1e-5, atol=1e-7)


# -- optimizers -------------------------------------------------------------------------------
def _run_both(make_cpu, step_gpu, steps=3):
    """Three steps of the CPU optimizer and of the device update, on the same gradients; the
    parameters after each step must agree."""
    rng = np.random.default_rng(0)
    p = nn.Parameter(rng.standard_normal((3, 5)).astype(np.float32))
    p_dev, state = cuda.to_device(p.data), None
    opt = make_cpu([p])
    for t in range(1, steps + 1):
        p.grad = rng.standard_normal((3, 5)).astype(np.float32)
        opt.step()
        state = step_gpu(p_dev, cuda.to_device(p.grad), state, t)
        np.testing.assert_allclose(_host(p_dev), p.data, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, weight_decay=0.1), dict(weight_decay=0.1)])
def test_sgd_step_matches_the_optimizer(kw):
    _run_both(lambda ps: optim.SGD(ps, lr=0.1, **kw),
              lambda p, g, v, t: gpu.sgd_step(p, g, v, 0.1, **kw))


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_step_matches_the_optimizer(decoupled, weight_decay):
    kind = optim.AdamW if decoupled else optim.Adam

    def step(p, g, moments, t):
        m, v = moments or (cuda.to_device(np.zeros(p.shape, np.float32)),
                           cuda.to_device(np.zeros(p.shape, np.float32)))
        gpu.adam_step(p, g, m, v, t, 0.01, (0.8, 0.9), 1e-6, weight_decay, decoupled)
        return m, v

    _run_both(lambda ps: kind(ps, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=weight_decay),
              step)
