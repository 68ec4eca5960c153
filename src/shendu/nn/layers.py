"""The layers: each a forward and a backward that read like the math, over cached inputs.

Images are logically NCHW. Convolution and pooling return NCHW-shaped views of channels-last
(NHWC) memory, as PyTorch's `channels_last` does, so consecutive layers pass data without copies.

Each layer runs where its input lives: `K = kernels.of(x)` is kernels.cpu for NumPy arrays and
kernels.cuda for CUDA device arrays (a model moved by `.to("cuda")`), the same functions.
"""
import math

import numpy as np

from .. import kernels
from ..errors import ShenduError
from ..kernels import conv
from . import init
from .module import Module, Parameter


def _nhwc(x):
    """A logically NCHW array as contiguous NHWC memory (free when it already is channels-last)."""
    K = kernels.of(x)
    return K.contiguous(K.transpose(x, (0, 2, 3, 1)))


def _nchw(x):
    return kernels.of(x).transpose(x, (0, 3, 1, 2))


def _check_input(layer, x, ndim, channels=None):
    """Wrong inputs fail here, naming the layer and the shapes, not deep inside a kernel."""
    K = kernels.of(x)
    on_cpu = K.DEVICE == "cpu"
    x = np.asarray(x) if on_cpu else x
    if not kernels.is_float(x.dtype) or (not on_cpu and x.dtype not in kernels.CUDA_DTYPES):
        raise ShenduError(f"{layer!r} expects floating-point input (images scaled to [0, 1]; "
                          f"float32 or float16 on CUDA), got dtype {x.dtype}")
    if x.ndim != ndim or (channels is not None and x.shape[1] != channels):
        want = "(N, C, H, W)" if ndim == 4 else "(N, features)"
        want = want.replace("C", str(channels)).replace("features", str(channels))
        raise ShenduError(f"{layer!r} expects input of shape {want}, got {tuple(x.shape)}")
    weight = layer._params.get("weight")
    if weight is None:
        return x
    W = kernels.of(weight.data)
    if W.DEVICE != K.DEVICE:
        raise ShenduError(f"{layer!r} has its weights on {W.DEVICE} but its input on "
                          f"{K.DEVICE}: move the input there, or the model with .to()")
    dtype = weight.data.dtype if layer.compute is None else layer.compute  # what it computes in
    if dtype != x.dtype:
        raise ShenduError(f"{layer!r} computes in {dtype} but its input is {x.dtype}: cast the "
                          "input, or the model with .to(dtype=...)")
    return x


def _cpu_only(layer, x):
    if kernels.of(x).DEVICE != "cpu":
        raise ShenduError(f"{type(layer).__name__} has no CUDA kernel yet: keep the model on the "
                          "CPU, or use ReLU")


class _Weighted(Module):
    """A layer with weights W (Linear, Conv2d, ConvTranspose2d, Embedding). With `binary` set
    (BinaryConnect training: shendu.quantization.train_binary), it computes with each weight's
    sign times its output's mean |w| (`binary_weights`), and the gradient it finds for those goes
    to W unchanged: the straight-through estimator, which treats the sign as if it were the
    identity. With `compute` set (mixed precision: shendu.mixed), it computes with a 16-bit copy
    of W, and W's gradient is found in 16 bits."""

    binary = False

    def weights_used(self):
        w = binary_weights(self.weight.data) if self.binary else self.weight.data
        return w if self.compute is None else kernels.narrow.cast(w, self.compute)


def binary_weights(w):
    """±α: each weight's sign (+ for 0) times its output's α (`binary_scale`)."""
    alpha = binary_scale(w)
    return np.where(w >= 0, alpha, -alpha)


def binary_scale(w):
    """α, the mean |w| of each output's weights (w's first axis), shaped to broadcast over w."""
    return np.abs(w).mean(axis=tuple(range(1, w.ndim)), keepdims=True).astype(w.dtype)


class Linear(_Weighted):
    """y = x Wᵀ + b."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.he_normal((out_features, in_features), fan_in=in_features))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None
        self.x = None

    def forward(self, x):
        x = _check_input(self, x, 2, self.in_features)
        K = kernels.of(x)
        self.x = x if self.keeps_cache else None
        y = K.matmul(x, self.weights_used(), transpose_b=True)  # x Wᵀ
        if self.bias is not None:
            K.add_bias(y, self.bias.data)
        return y

    accepts_input_grad = True

    def backward(self, dy, input_grad=True):
        x = self._cached(self.x)
        K = kernels.of(dy)
        self.weight.grad = K.matmul(dy, x, transpose_a=True)  # dyᵀ x
        if self.bias is not None:
            self.bias.grad = K.sum_rows(dy)
        return K.matmul(dy, self.weights_used()) if input_grad else None

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(_Weighted):
    """y[n, o] = b[o] + Σ_c W[o, c] ⋆ x[n, c]  (cross-correlation, as every framework computes)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = Parameter(init.he_normal(
            (out_channels, in_channels, kernel_size, kernel_size), fan_in=fan_in))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self.x = None

    def forward(self, x):
        x = _nhwc(_check_input(self, x, 4, self.in_channels))
        self.x = x if self.keeps_cache else None
        b = self.bias.data if self.bias is not None else None
        return _nchw(kernels.of(x).conv_forward(x, self.weights_used(), b, self.stride,
                                                self.padding))

    accepts_input_grad = True

    def backward(self, dy, input_grad=True):
        dx, self.weight.grad, db = kernels.of(dy).conv_backward(
            _nhwc(dy), self._cached(self.x), self.weights_used(), self.stride, self.padding,
            input_grad)
        if self.bias is not None:
            self.bias.grad = db
        return _nchw(dx) if input_grad else None

    def forward_folded(self, x, bn):
        """bn(self(x)) for a BatchNorm2d (or BatchNormReLU2d) in eval mode, in one pass: its
        running statistics make it y = s·z + t per channel, s = γ/√(σ² + ε), t = β − μ·s, so
        the convolution runs with the weights s·W and the bias s·b + t (then max(y, 0) with a
        ReLU). Inference only (see Sequential.forward): nothing is kept for backward."""
        x = _nhwc(_check_input(self, x, 4, self.in_channels))
        K = kernels.of(x)
        w, b = K.on_host(_folded, self.weights_used(),
                         None if self.bias is None else self.bias.data, bn.weight.data,
                         bn.bias.data, bn.running_mean, bn.running_var, bn.eps)
        return _nchw(K.conv_forward(x, w, b, self.stride, self.padding, relu=bn.relu))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


def _folded(w, b, gamma, beta, mean, var, eps):
    """The weights and bias of a convolution with the BatchNorm after it folded in: the scale
    and shift in float64, then the weights scaled in their own dtype (one rounding of each)."""
    scale = gamma / np.sqrt(var.astype(np.float64) + eps)
    shift = beta - mean * scale + (0 if b is None else b * scale)
    return w * scale.astype(w.dtype)[:, None, None, None], shift.astype(w.dtype)


class ConvReLU2d(Conv2d):
    """y = max(conv(x), 0) in one pass: the convolution rectifies each row of its output while
    it is in cache, instead of ReLU reading the whole output again. `nn.fuse` puts one in place
    of a Conv2d followed by a ReLU, as PyTorch's fuse_modules does; it holds that Conv2d's own
    parameters, under the same names."""

    def __init__(self, conv):
        Module.__init__(self)  # the convolution's settings and Parameters, not new ones
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding"):
            setattr(self, name, getattr(conv, name))
        self.weight, self.bias = conv.weight, conv.bias
        self.x = self.y = None

    def forward(self, x):
        x = _nhwc(_check_input(self, x, 4, self.in_channels))
        self.x = x if self.keeps_cache else None
        b = self.bias.data if self.bias is not None else None
        y = _nchw(kernels.of(x).conv_forward(x, self.weights_used(), b, self.stride, self.padding,
                                             relu=True))
        self.y = y if self.keeps_cache else None
        return y

    forward_folded = None  # its ReLU comes before any BatchNorm: nothing to fold

    def backward(self, dy, input_grad=True):
        """ReLU's backward (dy passes where y > 0), then the convolution's."""
        return super().backward(kernels.of(dy).relu_backward(dy, self._cached(self.y)),
                                input_grad)


class ConvTranspose2d(_Weighted):
    """The transpose of a convolution, which upsamples: each input pixel adds its values times
    the kernel into a k × k window of the output, the windows `stride` apart,
    y[n, o, i·s + u − p, j·s + v − p] += Σ_c x[n, c, i, j] W[c, o, u, v], then + b[o]; the output
    is (H − 1)·s − 2p + k + output_padding high (and as wide). W is (in, out, k, k), as PyTorch's.

    It is the input gradient of a Conv2d with the same weights, and is computed as a Conv2d: the
    input spread out (s − 1 zeros between its pixels, k − 1 − p zeros around, output_padding
    more below and right), correlated with W flipped in space and with its channel axes swapped
    (the textbook's conv_input_grad computes dL/dx of a convolution the same way). Its backward
    is that convolution's backward, whose input gradient is read back at the spread pixels."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias=True):
        super().__init__()
        if not 0 <= padding <= kernel_size - 1 or not 0 <= output_padding < stride:
            raise ShenduError(f"ConvTranspose2d needs 0 <= padding <= kernel_size - 1 and "
                              f"0 <= output_padding < stride, got padding={padding}, "
                              f"output_padding={output_padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.output_padding = output_padding
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = Parameter(init.he_normal(
            (in_channels, out_channels, kernel_size, kernel_size), fan_in=fan_in))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self.cache = None

    def _pixels(self, h, w):
        """Where the input's pixels go in the spread-out array: (row slice, column slice)."""
        edge, s = self.kernel_size - 1 - self.padding, self.stride
        return slice(edge, edge + (h - 1) * s + 1, s), slice(edge, edge + (w - 1) * s + 1, s)

    def forward(self, x):
        x = _nhwc(_check_input(self, x, 4, self.in_channels))
        K = kernels.of(x)
        n, h, w, c = x.shape
        grow = 2 * (self.kernel_size - 1 - self.padding) + self.output_padding + 1
        spread = K.zeros((n, (h - 1) * self.stride + grow, (w - 1) * self.stride + grow, c),
                         x.dtype)
        K.copy_into(K.view(spread, (slice(None), *self._pixels(h, w))), x)
        self.cache = (spread, h, w) if self.keeps_cache else None
        b = self.bias.data if self.bias is not None else None
        return _nchw(K.conv_forward(spread, self._flipped(K), b, 1, 0))

    accepts_input_grad = True

    def backward(self, dy, input_grad=True):
        spread, h, w = self._cached(self.cache)
        K = kernels.of(dy)
        d_spread, d_flipped, db = K.conv_backward(_nhwc(dy), spread, self._flipped(K), 1, 0,
                                                  input_grad)
        self.weight.grad, = K.on_host(lambda g: (_flip(g),), d_flipped)
        if self.bias is not None:
            self.bias.grad = db
        if not input_grad:
            return None
        return _nchw(K.contiguous(K.view(d_spread, (slice(None), *self._pixels(h, w)))))

    def _flipped(self, K):
        """W flipped in space with its channel axes swapped: the Conv2d weights (out, in, k, k)."""
        flipped, = K.on_host(lambda w: (_flip(w),), self.weights_used())
        return flipped

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, "
                f"output_padding={self.output_padding}, bias={self.bias is not None}")


def _flip(w):
    """w[a, b, u, v] → w[b, a, k − 1 − u, k − 1 − v] (its own inverse)."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        if not 0 <= padding <= kernel_size // 2:
            raise ShenduError(f"pooling padding must be between 0 and half the window, got {padding}")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.cache = None

    def _output(self, x):
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        oh, ow = conv.out_size(h, k, s, p), conv.out_size(w, k, s, p)
        if oh < 1 or ow < 1:
            raise ShenduError(f"{self!r}: input {tuple(x.shape)} is smaller than the pooling "
                              "window")
        return kernels.of(x).empty((n, oh, ow, c), x.dtype)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """y = the maximum of each window; the gradient flows only to that maximum."""

    def forward(self, x):
        x = _check_input(self, x, 4)
        K = kernels.of(x)
        y = self._output(x)
        arg = K.empty(y.shape, np.int32) if self.keeps_cache else None
        K.maxpool_forward(_nhwc(x), self.kernel_size, self.stride, self.padding, y, arg)
        self.cache = (arg, x.shape) if self.keeps_cache else None
        return _nchw(y)

    def backward(self, dy):
        arg, (n, c, h, w) = self._cached(self.cache)
        K = kernels.of(dy)
        dx = K.empty((n, h, w, c), dy.dtype)
        K.maxpool_backward(_nhwc(dy), arg, dx)
        return _nchw(dx)


class AvgPool2d(_Pool2d):
    """y = the mean of each window (padding counts as zeros); the gradient is shared equally."""

    def forward(self, x):
        x = _check_input(self, x, 4)
        y = self._output(x)
        kernels.of(x).avgpool_forward(_nhwc(x), self.kernel_size, self.stride, self.padding, y)
        self.cache = x.shape if self.keeps_cache else None
        return _nchw(y)

    def backward(self, dy):
        n, c, h, w = self._cached(self.cache)
        K = kernels.of(dy)
        dx = K.empty((n, h, w, c), dy.dtype)
        K.avgpool_backward(_nhwc(dy), self.kernel_size, self.stride, self.padding, dx)
        return _nchw(dx)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) → (N, C): the mean of each channel's map."""

    def __init__(self):
        super().__init__()
        self.shape = None

    def forward(self, x):
        x = _check_input(self, x, 4)
        self.shape = x.shape
        return kernels.of(x).global_avgpool_forward(x)

    def backward(self, dy):
        return kernels.of(dy).global_avgpool_backward(dy, self._cached(self.shape))


class Upsample(Module):
    """Each map made `scale_factor` times higher and wider: y = A x Bᵀ for every image and
    channel, A (and B) the matrix whose row i weighs the input rows that output row i reads:
    "nearest" copies row ⌊i / s⌋; "bilinear" mixes the two rows around (i + ½) / s − ½ (PyTorch's
    align_corners=False; clamped to the first and last rows). Backward is dx = Aᵀ dy B."""

    MODES = ("nearest", "bilinear")

    def __init__(self, scale_factor=2, mode="nearest"):
        super().__init__()
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
            raise ShenduError(f"Upsample takes a whole scale_factor >= 1, got {scale_factor!r}")
        if mode not in self.MODES:
            raise ShenduError(f"Upsample mode must be one of {', '.join(self.MODES)}, got "
                              f"{mode!r}")
        self.scale_factor, self.mode = scale_factor, mode
        self.cache = None

    def forward(self, x):
        x = _check_input(self, x, 4)
        K = kernels.of(x)
        rows, cols = (K.array(_interpolation(size, self.scale_factor, self.mode, x.dtype))
                      for size in x.shape[2:])
        self.cache = (rows, cols) if self.keeps_cache else None
        return _between(K, x, rows, cols, backward=False)

    def backward(self, dy):
        rows, cols = self._cached(self.cache)
        return _between(kernels.of(dy), dy, rows, cols, backward=True)

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


def _interpolation(size, s, mode, dtype):
    """The (size·s, size) matrix that upsamples one axis of `size` pixels."""
    i = np.arange(size * s)
    a = np.zeros((size * s, size), dtype)
    if mode == "nearest":
        a[i, i // s] = 1
        return a
    source = np.maximum((i + 0.5) / s - 0.5, 0)
    low = np.floor(source).astype(int)
    high, frac = np.minimum(low + 1, size - 1), source - low
    np.add.at(a, (i, low), 1 - frac)
    np.add.at(a, (i, high), frac)
    return a


def _between(K, x, rows, cols, backward):
    """rows · x · colsᵀ for every image and channel of x (N, C, H, W), or rowsᵀ · x · cols for
    the backward pass: two matrix products, one along the columns, one along the rows."""
    n, c, h, _ = x.shape
    t = K.matmul(K.contiguous(x).reshape(n * c * h, x.shape[3]), cols, transpose_b=not backward)
    w = t.shape[1]
    t = K.contiguous(K.transpose(t.reshape(n * c, h, w), (1, 0, 2))).reshape(h, n * c * w)
    t = K.matmul(rows, t, transpose_a=backward)
    return K.contiguous(K.transpose(t.reshape(t.shape[0], n * c, w), (1, 0, 2))).reshape(
        n, c, -1, w)


class Flatten(Module):
    """(N, C, H, W) → (N, C·H·W) in C, H, W order, as PyTorch flattens."""

    def __init__(self):
        super().__init__()
        self.shape = None

    def forward(self, x):
        self.shape = x.shape
        return kernels.of(x).contiguous(x).reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy):
        return kernels.of(dy).contiguous(dy).reshape(self._cached(self.shape))


class ReLU(Module):
    """y = max(x, 0); dy passes where x > 0, that is where y > 0."""

    def __init__(self):
        super().__init__()
        self.y = None

    def forward(self, x):
        y = kernels.of(x).relu_forward(x)
        self.y = y if self.keeps_cache else None
        return y

    def backward(self, dy):
        return kernels.of(dy).relu_backward(dy, self._cached(self.y))


class LeakyReLU(Module):
    """y = x where x > 0, else negative_slope · x (0.01 by default, as PyTorch's); dy passes
    where x > 0 and is multiplied by the slope elsewhere."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.x = None

    def forward(self, x):
        self.x = x if self.keeps_cache else None
        return kernels.of(x).leaky_relu_forward(x, self.negative_slope)

    def backward(self, dy):
        return kernels.of(dy).leaky_relu_backward(dy, self._cached(self.x), self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Embedding(_Weighted):
    """y[..., :] = W[index]: each token (an integer in [0, num_embeddings)) replaced by its row
    of the table W (num_embeddings, embedding_dim), drawn from N(0, 1) as PyTorch's. Backward
    adds each token's dy into its row; the tokens themselves have no gradient."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(init.normal((num_embeddings, embedding_dim)))
        self.cache = None

    def forward(self, index):
        index = np.asarray(kernels.to_host(index))
        if index.dtype.kind not in "iu" or (index.size and not (
                0 <= index.min() and index.max() < self.num_embeddings)):
            raise ShenduError(f"{self!r} takes integer tokens in [0, {self.num_embeddings}), got "
                              f"{index.dtype} values" + (f" from {index.min()} to {index.max()}"
                                                         if index.size else ""))
        K = kernels.of(self.weight.data)
        flat = K.array(index.reshape(-1).astype(np.int64))
        self.cache = (flat, index.shape) if self.keeps_cache else None
        y = K.embedding_forward(self.weights_used(), flat)
        return y.reshape(*index.shape, self.embedding_dim)

    def backward(self, dy):
        flat, _ = self._cached(self.cache)
        K = kernels.of(dy)
        self.weight.grad = K.embedding_backward(K.contiguous(dy).reshape(-1, self.embedding_dim),
                                                flat, self.num_embeddings)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LSTM(Module):
    """A long short-term memory layer (Hochreiter and Schmidhuber 1997), as PyTorch's nn.LSTM with
    one layer. At each step t, from the input x_t and the previous state (h, c):

        [i, f, g, o] = x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh      (each H wide)
        c ← σ(f) c + σ(i) tanh(g)        h ← σ(o) tanh(c)

    `forward(x, state=None)` takes x (T, N, input_size), or (N, T, input_size) with
    batch_first, and state (h0, c0), each (1, N, hidden_size) (zeros if None); it returns
    (y, (h_T, c_T)), y holding every step's h. `backward(dy, dstate=None)` takes dL/dy and
    optionally (dL/dh_T, dL/dc_T), and returns (dL/dx, (dL/dh0, dL/dc0)): backpropagation
    through time, the steps in reverse. The input's products with W_ih are one matrix product
    for all steps, and so are their gradients; only the recurrent products go step by step.
    Weights and biases are drawn from U(−1/√H, 1/√H) and named as PyTorch's."""

    def __init__(self, input_size, hidden_size, batch_first=False):
        super().__init__()
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, batch_first
        bound = 1 / math.sqrt(hidden_size)
        for name, shape in (("weight_ih_l0", (4 * hidden_size, input_size)),
                            ("weight_hh_l0", (4 * hidden_size, hidden_size)),
                            ("bias_ih_l0", (4 * hidden_size,)), ("bias_hh_l0", (4 * hidden_size,))):
            setattr(self, name, Parameter(init.uniform(shape, bound)))
        self.cache = None

    def forward(self, x, state=None):
        K = kernels.of(x)
        if x.ndim != 3 or x.shape[2] != self.input_size or not kernels.is_float(x.dtype):
            raise ShenduError(f"{self!r} expects floating-point input of shape "
                              f"({'N, T' if self.batch_first else 'T, N'}, {self.input_size}), "
                              f"got {x.dtype} {tuple(x.shape)}")
        x = K.contiguous(K.transpose(x, (1, 0, 2)) if self.batch_first else x)  # time first
        steps, n, size = x.shape[0], x.shape[1], self.hidden_size
        h, c = (K.zeros((n, size), x.dtype),) * 2 if state is None else (s[0] for s in state)
        hs, cs = K.empty((steps + 1, n, size), x.dtype), K.empty((steps + 1, n, size), x.dtype)
        acts = K.empty((steps, n, 4 * size), x.dtype)
        K.copy_into(hs[0], h)
        K.copy_into(cs[0], c)
        inputs = K.matmul(x.reshape(steps * n, self.input_size), self.weight_ih_l0.data,
                          transpose_b=True)
        K.add_bias(inputs, self.bias_ih_l0.data)
        K.add_bias(inputs, self.bias_hh_l0.data)
        inputs = inputs.reshape(steps, n, 4 * size)
        for t in range(steps):
            gates = K.add(inputs[t], K.matmul(hs[t], self.weight_hh_l0.data, transpose_b=True))
            K.lstm_cell(gates, cs[t], acts[t], cs[t + 1], hs[t + 1])
        self.cache = (x, hs, cs, acts) if self.keeps_cache else None
        y = hs[1:]
        y = K.contiguous(K.transpose(y, (1, 0, 2))) if self.batch_first else y
        return y, (hs[steps:], cs[steps:])

    def backward(self, dy, dstate=None):
        x, hs, cs, acts = self._cached(self.cache)
        K = kernels.of(dy)
        dy = K.contiguous(K.transpose(dy, (1, 0, 2)) if self.batch_first else dy)
        steps, n, size = acts.shape[0], acts.shape[1], self.hidden_size
        dh, dc = ((K.zeros((n, size), dy.dtype),) * 2 if dstate is None
                  else (K.contiguous(d[0]) for d in dstate))
        dgates = K.empty((steps, n, 4 * size), dy.dtype)
        for t in reversed(range(steps)):
            dc_prev = K.empty((n, size), dy.dtype)
            K.lstm_cell_backward(K.add(dy[t], dh), dc, acts[t], cs[t], cs[t + 1], dgates[t],
                                 dc_prev)
            dh, dc = K.matmul(dgates[t], self.weight_hh_l0.data), dc_prev
        rows = dgates.reshape(steps * n, 4 * size)
        self.weight_ih_l0.grad = K.matmul(rows, x.reshape(steps * n, self.input_size),
                                          transpose_a=True)
        self.weight_hh_l0.grad = K.matmul(rows, hs[:steps].reshape(steps * n, size),
                                          transpose_a=True)
        self.bias_ih_l0.grad = K.sum_rows(rows)
        self.bias_hh_l0.grad = K.copy(self.bias_ih_l0.grad)
        dx = K.matmul(rows, self.weight_ih_l0.data).reshape(steps, n, self.input_size)
        dx = K.contiguous(K.transpose(dx, (1, 0, 2))) if self.batch_first else dx
        return dx, (dh.reshape(1, n, size), dc.reshape(1, n, size))

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, batch_first={self.batch_first}"


class Identity(Module):
    """y = x: a placeholder that keeps a layer's place (where nn.fuse took a ReLU into the
    convolution before it), as PyTorch's nn.Identity."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class Sigmoid(Module):
    """y = 1 / (1 + e^{-x}); dy/dx = y (1 - y)."""

    def __init__(self):
        super().__init__()
        self.y = None

    def forward(self, x):
        _cpu_only(self, x)
        y = 1 / (1 + np.exp(-x))
        self.y = y if self.keeps_cache else None
        return y

    def backward(self, dy):
        y = self._cached(self.y)
        return dy * y * (1 - y)


class Tanh(Module):
    """y = tanh x; dy/dx = 1 - y²."""

    def __init__(self):
        super().__init__()
        self.y = None

    def forward(self, x):
        _cpu_only(self, x)
        y = np.tanh(x)
        self.y = y if self.keeps_cache else None
        return y

    def backward(self, dy):
        y = self._cached(self.y)
        return dy * (1 - y * y)


class Dropout(Module):
    """Inverted dropout: in training each unit is zeroed with probability p and the survivors are
    scaled by 1/(1-p), so evaluation is the identity."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ShenduError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.scale = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self.scale = None
            return x
        K = kernels.of(x)
        self.scale = K.dropout_mask(x, self.p)
        return K.multiply(x, self.scale)

    def backward(self, dy):
        return dy if self.scale is None else kernels.of(dy).multiply(dy, self.scale)

    def extra_repr(self):
        return f"p={self.p}"


class _BatchNorm(Module):
    """y = γ (x − μ) / √(σ² + ε) + β, with μ, σ² from the batch in training and from running
    averages in evaluation (the running variance is unbiased, as in PyTorch)."""

    relu = False  # BatchNormReLU2d: max(y, 0) in the same pass

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.cache = None

    def _normalize(self, x):  # x: (M, C), one row per position
        K = kernels.of(x)
        x = K.contiguous(x)
        batch = K.batch_stats(x) if self.training else None
        mean, inv_std, self.running_mean, self.running_var = K.on_host(  # in γ's type
            self._statistics, batch, self.running_mean, self.running_var, len(x),
            self.weight.data.dtype)
        y = K.empty_like(x)
        K.normalize(x, mean, inv_std, self.weight.data, self.bias.data, self.relu, y)
        # backward recomputes x̂ from x, which the layer before wrote anyway: no x̂ is stored
        self.cache = (x, mean, inv_std, self.training) if self.keeps_cache else None
        return y

    def _statistics(self, batch, running_mean, running_var, m, dtype):
        """The μ and 1/√(σ² + ε) to normalise with: the batch's (mean, variance), whose running
        averages are updated, or in evaluation the running averages themselves."""
        if batch is None:
            mean, var = running_mean, running_var
        else:
            mean, var = batch
            running_mean = ((1 - self.momentum) * running_mean
                            + self.momentum * mean).astype(dtype)
            running_var = ((1 - self.momentum) * running_var
                           + self.momentum * var * m / max(m - 1, 1)).astype(dtype)
        inv_std = (1 / np.sqrt(var + self.eps)).astype(dtype)
        return mean.astype(dtype), inv_std, running_mean, running_var

    def _backward(self, dy):  # dy: (M, C)
        x, mean, inv_std, batch_stats = self._cached(self.cache)
        K = kernels.of(dy)
        dy = K.contiguous(dy)
        gamma, beta = self.weight.data, self.bias.data
        # Σ g, Σ g x̂ (g: dy past the ReLU)
        sums = K.grad_sums(dy, x, mean, inv_std, gamma, beta, self.relu)
        self.bias.grad, self.weight.grad, mean_dy, mean_dy_xhat = K.on_host(
            _gradient_terms, sums, len(dy), dy.dtype, batch_stats)
        # μ and σ² depend on every x in training: dx = γ/σ (g − mean(g) − x̂ · mean(g x̂));
        # running statistics are constants: dx = γ/σ · g (the two means given as zeros)
        dx = K.empty_like(dy)
        K.normalize_backward(dy, x, mean, inv_std, mean_dy, mean_dy_xhat, gamma, beta, self.relu,
                             dx)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _gradient_terms(sums, m, dtype, batch_stats):
    """dL/dβ = Σ g and dL/dγ = Σ g x̂ (summed in float64), and the means of g and g x̂ (zeros
    where the statistics were the running ones, constants)."""
    dbeta, dgamma = sums
    means = (dbeta / m, dgamma / m) if batch_stats else (np.zeros_like(dbeta),) * 2
    return (dbeta.astype(dtype), dgamma.astype(dtype), means[0].astype(dtype),
            means[1].astype(dtype))


class BatchNorm1d(_BatchNorm):
    def forward(self, x):
        return self._normalize(_check_input(self, x, 2, self.num_features))

    def backward(self, dy):
        return self._backward(dy)


class BatchNorm2d(_BatchNorm):
    """Statistics per channel over the batch and every position."""

    folds_into_conv = True  # in inference, by a Conv2d just before it (Sequential.forward)

    def forward(self, x):
        x = _check_input(self, x, 4, self.num_features)
        xh = _nhwc(x)
        return _nchw(self._normalize(xh.reshape(-1, xh.shape[3])).reshape(xh.shape))

    def backward(self, dy):
        dyh = _nhwc(dy)
        return _nchw(self._backward(dyh.reshape(-1, dyh.shape[3])).reshape(dyh.shape))


class BatchNormReLU2d(BatchNorm2d):
    """y = max(BatchNorm2d(x), 0) in one pass over memory: the ReLU rectifies each value as it
    is written, and its backward is folded into BatchNorm's (the gradient passes where
    γ x̂ + β > 0), so neither keeps an output of its own. `nn.fuse` puts one in place of a
    BatchNorm2d followed by a ReLU; it holds that BatchNorm2d's parameters and running
    statistics, under the same names."""

    relu = True

    def __init__(self, bn):
        Module.__init__(self)  # the BatchNorm's settings, Parameters and buffers, not new ones
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.cache = None
