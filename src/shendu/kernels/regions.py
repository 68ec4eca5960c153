"""Connected components of a binary image (8-connected), compiled by Numba, beside a NumPy
reference: the first step of the detectors' region proposals (shendu.detection)."""
import numpy as np
from numba import njit


@njit(cache=True)
def components(ink):
    """labels[i, j] = k ≥ 1 for the k-th component met in reading order, 0 off the ink; and
    the number of components. Each component is filled from its first pixel through a stack."""
    h, w = ink.shape
    labels = np.zeros((h, w), np.int32)
    stack = np.empty((h * w, 2), np.int64)
    count = 0
    for i in range(h):
        for j in range(w):
            if ink[i, j] and labels[i, j] == 0:
                count += 1
                labels[i, j] = count
                stack[0, 0], stack[0, 1], top = i, j, 1
                while top > 0:
                    top -= 1
                    y, x = stack[top, 0], stack[top, 1]
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            v, u = y + dy, x + dx
                            if 0 <= v < h and 0 <= u < w and ink[v, u] and labels[v, u] == 0:
                                labels[v, u] = count
                                stack[top, 0], stack[top, 1] = v, u
                                top += 1
    return labels, count


def components_reference(ink):
    """The same labels by propagation: every ink pixel takes the smallest number among itself
    and its 8 neighbours until nothing changes; then the numbers are made 1, 2, ... in reading
    order of each component's first pixel."""
    h, w = ink.shape
    big = h * w + 1
    labels = np.where(ink, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        around = np.min([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        new = np.where(ink, around, big)
        if (new == labels).all():
            break
        labels = new
    first = np.unique(labels[ink])  # each component's smallest number: its first pixel's
    out = np.zeros((h, w), np.int32)
    out[ink] = np.searchsorted(first, labels[ink]) + 1
    return out, len(first)
