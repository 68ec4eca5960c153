"""Every Numba kernel against its pure-NumPy reference, on odd shapes, strides and paddings."""
import os

import numpy as np
import pytest

from shendu.kernels import conv, cpu, norm, pointwise, pool, sample

CASES = [  # (n, h, w, c, k, stride, pad)
    (2, 5, 5, 1, 3, 1, 0),
    (3, 7, 6, 3, 3, 1, 1),
    (2, 9, 8, 2, 3, 2, 1),
    (1, 8, 11, 4, 5, 3, 2),
    (2, 6, 6, 3, 1, 1, 0),
    (2, 7, 7, 2, 3, 1, 2),   # DeepConvNet's padding 2
    (1, 4, 5, 2, 4, 2, 3),   # padding wider than half the kernel
    (2, 1, 1, 3, 3, 1, 1),   # a 1 × 1 map: one live tap, the centre
    (3, 2, 3, 2, 5, 1, 2),   # the outer rows of the kernel never meet the image
]


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n,h,w,c,k,s,p", CASES)
def test_col2im_reference_is_the_adjoint_of_im2col(n, h, w, c, k, s, p):
    # <im2col(x), y> = <x, col2im(y)> for all x, y: the defining property of an adjoint
    x = _rand(n, h, w, c, seed=1).astype(np.float64)
    cols = conv.im2col_reference(x, k, k, s, p)
    y = np.random.default_rng(2).standard_normal(cols.shape)
    assert np.isclose((cols * y).sum(), (x * conv.col2im_reference(y, s, p, x.shape)).sum())


def _conv_naive(x, w, b, s, p):
    """The definition, written with einsum over padded windows."""
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    o, c, k, _ = w.shape
    oh, ow = conv.out_size(x.shape[1], k, s, p), conv.out_size(x.shape[2], k, s, p)
    y = np.zeros((x.shape[0], oh, ow, o))
    for a in range(k):
        for bb in range(k):
            patch = xp[:, a:a + s * oh:s, bb:bb + s * ow:s][:, :oh, :ow]
            y += np.einsum("nijc,oc->nijo", patch, w[:, :, a, bb])
    return y + b


@pytest.mark.parametrize("n,h,w,c,k,s,p", CASES)
def test_conv_forward_and_backward_match_definitions(n, h, w, c, k, s, p):
    x = _rand(n, h, w, c).astype(np.float64)
    wt = _rand(4, c, k, k, seed=3).astype(np.float64)
    b = _rand(4, seed=4).astype(np.float64)
    y = conv.conv_forward(x, wt, b, s, p)
    np.testing.assert_allclose(y, _conv_naive(x, wt, b, s, p), rtol=1e-10, atol=1e-10)
    dy = _rand(*y.shape, seed=5).astype(np.float64)
    dx, dw, db = conv.conv_backward(dy, x, wt, s, p)
    col = conv.im2col_reference(x, k, k, s, p)
    # textbook backward: dcol = dy Wᵀ scattered back with col2im; dW = dyᵀ col
    dcol = (dy.reshape(-1, 4) @ wt.transpose(0, 2, 3, 1).reshape(4, -1)).reshape(col.shape)
    np.testing.assert_allclose(dx, conv.col2im_reference(dcol, s, p, x.shape), rtol=1e-10, atol=1e-10)
    dw_ref = np.einsum("nijo,nijabc->ocab", dy, conv.im2col_reference(x, k, k, s, p))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2)), rtol=1e-10)


@pytest.mark.parametrize("rows", range(1, conv.ROWS + 1))
@pytest.mark.parametrize("width", [conv.WIDTH, conv.HALF])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fma_tile_matches_its_formula(rows, width, dtype):
    # odd strides and offsets everywhere, three taps, a start value from another array
    a, b = _rand(400, seed=1).astype(dtype), _rand(900, seed=2).astype(dtype)
    c, start = _rand(200, seed=3).astype(dtype), _rand(200, seed=4).astype(dtype)
    taps, k_len = np.array([0, 37, 5]), 6
    a_at, a_row, a_k, b_at, b_k, b_tap = 3, 11, 7, 2, 19, 131
    c_at, c_row, s_at, s_row = 5, 23, 9, 17
    expected = c.copy()
    for r in range(rows):
        for v in range(width):
            expected[c_at + r * c_row + v] = start[s_at + r * s_row + v] + sum(
                a[a_at + t + r * a_row + k * a_k] * b[b_at + i * b_tap + k * b_k + v]
                for i, t in enumerate(taps) for k in range(k_len))
    conv._tile(rows, width, a, a_at, a_row, a_k, taps, k_len, b, b_at, b_k, b_tap, c, c_at, c_row,
               start, s_at, s_row)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol)  # and nothing else written


@pytest.mark.parametrize("n,h,w,c,k,s,p", CASES)
def test_im2col_and_col2im_kernels_equal_their_references(n, h, w, c, k, s, p):
    """On the live taps; the others see only padding (their columns of the reference are 0)."""
    x = _rand(n, h, w, c, seed=1)
    col, rows, cols = conv._patches(x, k, k, s, p)
    want = conv.im2col_reference(x, k, k, s, p)  # (n, oh, ow, kh, kw, c)
    live = want[:, :, :, rows][:, :, :, :, cols]
    np.testing.assert_array_equal(col, live.reshape(col.shape))
    dead = np.ones((k, k), bool)
    dead[np.ix_(rows, cols)] = False
    assert not want[:, :, :, dead].any()
    dcol = _rand(*col.shape, seed=2).astype(np.float64)
    dx = np.full(x.shape, np.nan)
    conv.col2im(dcol, rows, cols, s, p, dx)
    full = np.zeros(want.shape)
    full[:, :, :, rows[:, None], cols] = dcol.reshape(live.shape)
    np.testing.assert_allclose(dx, conv.col2im_reference(full, s, p, x.shape), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("size,k,s,p,want", [(1, 3, 1, 1, [1]), (2, 3, 1, 1, [0, 1, 2]),
                                             (1, 5, 1, 2, [2]), (2, 3, 2, 1, [1, 2]),
                                             (5, 3, 1, 0, [0, 1, 2])])
def test_live_taps_are_those_that_meet_the_image(size, k, s, p, want):
    assert conv.live_taps(size, k, s, p).tolist() == want


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 300, 5), (130, 513, 40), (64, 256, 16)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_kernel_equals_numpy(m, k, n, transposed):
    """Panels of KCHUNK sums and MCHUNK rows, ragged at every edge; a read row-major or, as
    conv_backward reads the patch matrix for dL/dw, column by column."""
    a, b = _rand(m, k, seed=1).astype(np.float64), _rand(k, n, seed=2).astype(np.float64)
    stored = np.ascontiguousarray(a.T) if transposed else a
    a_row, a_k = (1, m) if transposed else (k, 1)
    start = _rand(n, seed=3).astype(np.float64)
    c = conv._product(stored, a_row, a_k, m, k, b, start)
    assert c.shape == (m, -(-n // conv.HALF) * conv.HALF)
    np.testing.assert_allclose(c[:, :n], a @ b + start, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(c[:, n:], 0)


@pytest.mark.parametrize("stride,offset", [(1, 2), (2, 1), (3, 0), (1, -1)])
def test_spread_places_pixels_among_zeros(stride, offset):
    x = _rand(4, 5, 3)
    out = np.full((9, 11, 5), np.nan, np.float32)  # two channels more than x: zeros too
    conv.spread(x, stride, offset, out)
    expected = np.zeros((9 + 20, 11 + 20, 5), np.float32)  # room on every side, then cut
    expected[10 + offset::stride][:4, 10 + offset::stride][:, :5, :3] = x
    np.testing.assert_array_equal(out, expected[10:19, 10:21])


@pytest.mark.parametrize("o", [16, 5])
def test_conv_with_relu_is_relu_of_the_convolution(o):
    x, wt, b = _rand(2, 7, 6, 3), _rand(o, 3, 3, 3, seed=1), _rand(o, seed=2)
    y = conv.conv_forward(x, wt, b, 1, 1)
    assert (y < 0).any() and (y > 0).any()
    np.testing.assert_array_equal(conv.conv_forward(x, wt, b, 1, 1, relu=True), cpu.relu_forward(y))


@pytest.mark.parametrize("h,c,o,k,s,p", [(9, 16, 32, 3, 1, 1), (7, 32, 64, 3, 1, 2),
                                         (11, 20, 17, 5, 2, 2), (6, 64, 16, 1, 1, 0)])
def test_float32_convolution_matches_float64_definitions(h, c, o, k, s, p):
    """The network's channel counts (multiples of the tile's 16 columns, and others) in float32,
    output rows of every remainder modulo the tile's 4 rows, against the float64 definitions."""
    x, wt, b = _rand(3, h, h, c), _rand(o, c, k, k, seed=3) / c, _rand(o, seed=4)
    y = conv.conv_forward(x, wt, b, s, p)
    assert y.dtype == np.float32
    x64, w64 = x.astype(np.float64), wt.astype(np.float64)
    np.testing.assert_allclose(y, _conv_naive(x64, w64, b, s, p), rtol=1e-4, atol=1e-4)
    dy = _rand(*y.shape, seed=5)
    dx, dw, db = conv.conv_backward(dy, x, wt, s, p)
    dx64, dw64, db64 = conv.conv_backward(dy.astype(np.float64), x64, w64, s, p)
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    for got, want in [(dx, dx64), (dw, dw64), (db, db64)]:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


POOL_CASES = [(2, 6, 6, 3, 2, 2, 0), (1, 7, 5, 2, 3, 2, 1), (2, 5, 5, 1, 3, 1, 1), (1, 9, 8, 4, 2, 1, 0)]


@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_maxpool_matches_reference(n, h, w, c, k, s, p):
    x = _rand(n, h, w, c)
    oh, ow = conv.out_size(h, k, s, p), conv.out_size(w, k, s, p)
    y, arg = np.empty((n, oh, ow, c), np.float32), np.empty((n, oh, ow, c), np.int32)
    pool.maxpool_forward(x, k, s, p, y, arg)
    np.testing.assert_array_equal(y, pool.maxpool_reference(x, k, s, p))
    y_only = np.full_like(y, np.nan)
    pool.maxpool_forward(x, k, s, p, y_only, None)  # inference: no record of the winners
    np.testing.assert_array_equal(y_only, y)
    dy = _rand(*y.shape, seed=1)
    dx = np.empty_like(x)
    pool.maxpool_backward(dy, arg, dx)
    np.testing.assert_allclose(dx, pool.maxpool_backward_reference(x, dy, k, s, p), rtol=1e-5, atol=1e-6)


def test_maxpool_ties_go_to_the_first_maximum():
    x = np.ones((1, 2, 2, 1), np.float32)
    y, arg = np.empty((1, 1, 1, 1), np.float32), np.empty((1, 1, 1, 1), np.int32)
    pool.maxpool_forward(x, 2, 2, 0, y, arg)
    dx = np.empty_like(x)
    pool.maxpool_backward(np.ones_like(y), arg, dx)
    np.testing.assert_array_equal(dx.ravel(), [1, 0, 0, 0])
    np.testing.assert_array_equal(dx, pool.maxpool_backward_reference(x, np.ones_like(y), 2, 2, 0))


@pytest.mark.parametrize("n,h,w,c,k,s,p", POOL_CASES)
def test_avgpool_matches_reference(n, h, w, c, k, s, p):
    x = _rand(n, h, w, c)
    oh, ow = conv.out_size(h, k, s, p), conv.out_size(w, k, s, p)
    y = np.empty((n, oh, ow, c), np.float32)
    pool.avgpool_forward(x, k, s, p, y)
    np.testing.assert_allclose(y, pool.avgpool_reference(x, k, s, p), rtol=1e-5, atol=1e-6)
    dy = _rand(*y.shape, seed=1)
    dx = np.empty_like(x)
    pool.avgpool_backward(dy, k, s, p, dx)
    np.testing.assert_allclose(dx, pool.avgpool_backward_reference(x.shape, dy, k, s, p),
                               rtol=1e-5, atol=1e-6)


# -- batch normalisation ---------------------------------------------------------------------
@pytest.mark.parametrize("m,c", [(1, 3), (7, 5), (2 * norm.BLOCK + 13, 16)])
def test_batchnorm_kernels_match_numpy(m, c):
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, c)) * 3 + 100).astype(np.float32)  # a mean far from 0
    mean, var = norm.batch_stats(x)
    ref_mean, ref_var = norm.batch_stats_reference(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-9, atol=1e-12)
    inv_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    gamma, beta = rng.standard_normal((2, c)).astype(np.float32)
    mean32 = mean.astype(np.float32)
    xhat = (x - mean32) * inv_std  # float32, as the kernels compute it
    y = np.empty_like(x)
    norm.normalize(x, mean32, inv_std, gamma, beta, False, y)
    np.testing.assert_allclose(xhat, (x - ref_mean) * inv_std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, xhat * gamma + beta, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal((m, c)).astype(np.float32)
    sum_dy, sum_dy_xhat = norm.grad_sums(dy, x, mean32, inv_std, gamma, beta, False)
    np.testing.assert_allclose(sum_dy, dy.sum(axis=0, dtype=np.float64), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sum_dy_xhat, (dy.astype(np.float64) * xhat).sum(axis=0),
                               rtol=1e-9, atol=1e-9)
    dx = np.empty_like(dy)
    norm.normalize_backward(dy, x, mean32, inv_std, (sum_dy / m).astype(np.float32),
                            (sum_dy_xhat / m).astype(np.float32), gamma, beta, False, dx)
    np.testing.assert_allclose(dx, norm.normalize_backward_reference(dy, xhat, inv_std, gamma),
                               rtol=1e-4, atol=1e-4 * np.abs(gamma * inv_std).max())


def test_blocks_are_added_in_order():
    partial = np.random.default_rng(0).standard_normal((7, 5)) * 10.0 ** np.arange(7)[:, None]
    in_order = partial[0].copy()
    for row in partial[1:]:
        in_order += row
    assert pointwise.add_blocks(partial).tobytes() == in_order.tobytes()


def _weight_grad(x):  # conv's weight gradient: a sum over the batch, in parts
    n = x.size // 64
    images = x.ravel()[:n * 64].reshape(n, 8, 8, 1)
    return conv.conv_backward(images, images, np.zeros((1, 1, 3, 3), np.float32), 1, 1)[1]


@pytest.mark.parametrize("sums", [norm.batch_stats, pointwise.sum_rows, _weight_grad])
def test_sums_over_the_batch_do_not_depend_on_the_thread_count(sums):
    import numba
    x = _rand(5 * pointwise.BLOCK + 7, 8)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sums(x)
        numba.set_num_threads(before)
        many = sums(x)
    finally:
        numba.set_num_threads(before)
    assert np.asarray(one).tobytes() == np.asarray(many).tobytes()


# -- element-wise -------------------------------------------------------------------------------
LAYOUTS = {  # how an array of logical shape (2, 3, 4, 5) may lie in memory
    "contiguous": lambda a: np.ascontiguousarray(a),
    "channels last": lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
    "strided": lambda a: np.pad(a, ((0, 0), (0, 0), (0, 0), (0, 3)))[..., :5],  # not dense
    "channel slice": lambda a: np.ascontiguousarray(  # Concat's gradient, one branch's part
        np.pad(a, ((0, 0), (2, 1), (0, 0), (0, 0))).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)[:, 2:5],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("b_layout", LAYOUTS)
@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_numpy_in_every_layout(layout, b_layout, relu):
    a, b = _rand(2, 3, 4, 5), _rand(2, 3, 4, 5, seed=1)
    a[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    al = LAYOUTS[layout](a)
    y = (cpu.add_relu if relu else cpu.add)(al, LAYOUTS[b_layout](b))
    np.testing.assert_array_equal(y, np.maximum(a + b, 0) if relu else a + b)  # NaN stays NaN
    if layout in ("contiguous", "channels last"):
        assert y.strides == al.strides


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dy_layout", LAYOUTS)
def test_relu_matches_numpy_in_every_layout(layout, dy_layout):
    x = _rand(2, 3, 4, 5)
    x[0, 0, 0, :4] = [0, np.nan, np.inf, -np.inf]
    xl = LAYOUTS[layout](x)
    y = cpu.relu_forward(xl)
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # NaN stays NaN
    if layout in ("contiguous", "channels last"):
        assert y.strides == xl.strides  # the next layer gets the layout it gave
    dy = _rand(2, 3, 4, 5, seed=1)
    np.testing.assert_array_equal(cpu.relu_backward(LAYOUTS[dy_layout](dy), y),
                                  np.where(np.maximum(x, 0) > 0, dy, 0))


@pytest.mark.parametrize("m,c", [(1, 3), (7, 5), (2 * pointwise.BLOCK + 13, 16)])
def test_bias_kernels_match_numpy(m, c):
    a, b = _rand(m, c), _rand(c, seed=1)
    y = a.copy()
    cpu.add_bias(y, b)
    np.testing.assert_array_equal(y, a + b)
    total = cpu.sum_rows(a)
    assert total.dtype == np.float32
    np.testing.assert_allclose(total, a.sum(axis=0, dtype=np.float64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 1, 7, 9), (2, 3, 5, 5)])
def test_bilinear_sampling_matches_reference(shape):
    rng = np.random.default_rng(0)
    x = rng.random(shape, np.float32)
    n, _, h, w = shape
    rows = rng.uniform(-2, h + 1, (n, 4, 6))  # some outside the image, some exactly on pixels
    cols = rng.uniform(-2, w + 1, (n, 4, 6))
    rows[:, 0] = np.round(rows[:, 0])
    out = np.empty((n, shape[1], 4, 6), np.float32)
    sample.bilinear(x, rows, cols, out)
    np.testing.assert_allclose(out, sample.bilinear_reference(x, rows, cols), atol=1e-6)


def test_bilinear_reads_pixels_and_midpoints():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    rows = np.array([[[0, 2, 0.5, 1, -1]]], float)
    cols = np.array([[[0, 3, 0.5, 3.5, 0]]], float)
    out = np.empty((1, 1, 1, 5), np.float32)
    sample.bilinear(x, rows, cols, out)
    # pixel (0,0); pixel (2,3); mean of the four around (0.5,0.5); half of (1,3) beside the edge;
    # outside
    np.testing.assert_allclose(out[0, 0, 0], [0, 11, 2.5, 3.5, 0])


def test_matrix_products_run_blas_in_one_thread():
    """kernels.cpu.matmul runs NumPy's BLAS in one thread, for that call only, so that BLAS's
    threads never wake (and then spin on the cores Numba's kernels need), whatever was imported
    first; the process's own setting is back afterwards."""
    import threadpoolctl

    def blas_threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas"]

    seen = []

    class Probe(np.ndarray):
        def __matmul__(self, other):
            seen.append(blas_threads())
            return np.asarray(self) @ np.asarray(other)

    before = blas_threads()
    a = np.ones((4, 3), np.float32).view(Probe)
    np.testing.assert_array_equal(cpu.matmul(a, np.ones((2, 3), np.float32), transpose_b=True),
                                  np.full((4, 2), 3, np.float32))
    assert before and seen == [[1] * len(before)] and blas_threads() == before


def test_importing_shendu_changes_no_thread_setting():
    """The process keeps its own OMP_WAIT_POLICY and BLAS settings (shendu/tuning.py)."""
    import subprocess
    import sys
    probe = "import os, shendu; print(os.environ.get('OMP_WAIT_POLICY'), " \
            "os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["None", "None"]




def test_leaky_relu_kernels_are_numpys_where_in_any_layout():
    from shendu.kernels import cpu
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32).transpose(0, 3, 1, 2)  # NCHW view
    x[0, 0, 0, :2] = [0.0, np.nan]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    slope = np.float32(0.2)
    np.testing.assert_array_equal(cpu.leaky_relu_forward(x, 0.2), np.where(x > 0, x, slope * x))
    np.testing.assert_array_equal(cpu.leaky_relu_backward(dy, x, 0.2),
                                  np.where(x > 0, dy, slope * dy))
    assert cpu.leaky_relu_forward(x, 0.2).strides == x.strides  # laid out like x


def test_add_rows_at_sums_in_token_order_as_add_at_does():
    from shendu.kernels import pointwise
    rng = np.random.default_rng(0)
    index = rng.integers(0, 9, 500)
    dy = rng.standard_normal((500, 3)).astype(np.float32)
    grad = np.zeros((9, 3), np.float32)
    pointwise.add_rows_at(dy, index, grad)
    expected = np.zeros((9, 3), np.float32)
    np.add.at(expected, index, dy)  # unbuffered, in order: the same float32 sums
    np.testing.assert_array_equal(grad, expected)


def test_lstm_cell_is_the_formula():
    from shendu.kernels import recurrent
    rng = np.random.default_rng(0)
    gates, c_prev = rng.standard_normal((3, 8)) * 3, rng.standard_normal((3, 2))
    dh, dc_next = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    acts, c, h = np.empty((3, 8)), np.empty((3, 2)), np.empty((3, 2))
    recurrent.lstm_cell(gates, c_prev, acts, c, h)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    i, f, g, o = sig(gates[:, :2]), sig(gates[:, 2:4]), np.tanh(gates[:, 4:6]), sig(gates[:, 6:])
    np.testing.assert_allclose(acts, np.hstack([i, f, g, o]), rtol=1e-12)
    np.testing.assert_allclose(c, f * c_prev + i * g, rtol=1e-12)
    np.testing.assert_allclose(h, o * np.tanh(c), rtol=1e-12)
    dgates, dc_prev = np.empty((3, 8)), np.empty((3, 2))
    recurrent.lstm_cell_backward(dh, dc_next, acts, c_prev, c, dgates, dc_prev)
    dc = dh * o * (1 - np.tanh(c) ** 2) + dc_next  # h = o tanh(c), and c reaches the next step
    expected = np.hstack([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                          dh * np.tanh(c) * o * (1 - o)])
    np.testing.assert_allclose(dgates, expected, rtol=1e-12)
    np.testing.assert_allclose(dc_prev, dc * f, rtol=1e-12)
