"""Weight initialisation: He (for ReLU networks), Xavier/Glorot (for sigmoid and tanh), normal
(embeddings), uniform (recurrent layers) and bilinear (upsampling by a transposed convolution)."""
import numpy as np

from ..errors import ShenduError
from ..rng import generator


def he_normal(shape, fan_in, dtype=np.float32):
    """std = sqrt(2 / fan_in): keeps activation variance constant through ReLU layers."""
    return (generator().standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def xavier_normal(shape, fan_in, fan_out, dtype=np.float32):
    """std = sqrt(2 / (fan_in + fan_out)): keeps variance constant through symmetric activations."""
    return (generator().standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def normal(shape, std=1.0, dtype=np.float32):
    """N(0, std²): how PyTorch starts an embedding's table (std 1)."""
    return (generator().standard_normal(shape) * std).astype(dtype)


def uniform(shape, bound, dtype=np.float32):
    """U(−bound, bound): how PyTorch starts a recurrent layer's weights (bound 1/√hidden)."""
    return generator().uniform(-bound, bound, shape).astype(dtype)


def bilinear_(layer):
    """Make a ConvTranspose2d (as many outputs as inputs) upsample by bilinear interpolation, as
    FCN initialises its upsampling layers: each channel feeds only itself, through the kernel
    f(u) f(v) with f(u) = 1 − |u − c| / m, m = ⌈k / 2⌉, c = m − 1 for odd k and m − 1/2 for
    even k; the bias is 0. With stride s, kernel_size 2s − (s mod 2) and padding ⌊s / 2⌋, the
    output is the input interpolated bilinearly to s times its size (PyTorch's interpolate with
    align_corners=False), except within s pixels of the border, where the transposed
    convolution sees zeros beyond the image and interpolation repeats its edge. Returns the
    layer."""
    c_in, c_out, k, _ = layer.weight.shape
    if c_in != c_out:
        raise ShenduError(f"bilinear_ needs as many output channels as inputs, got {c_in} → "
                          f"{c_out}")
    m = (k + 1) // 2
    centre = m - 1 if k % 2 else m - 0.5
    f = 1 - np.abs(np.arange(k) - centre) / m
    weight = np.zeros(layer.weight.shape, layer.weight.data.dtype)
    weight[np.arange(c_in), np.arange(c_in)] = np.outer(f, f)
    layer.weight.data = weight
    if layer.bias is not None:
        layer.bias.data = np.zeros_like(layer.bias.data)
    return layer
