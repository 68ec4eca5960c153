"""Chapter 8's style transfer: Gram matrices by hand, the gradient of the losses with respect
to the image against numerical differentiation, and descent that lowers both losses."""
import numpy as np
import pytest

import shendu
from gradcheck import numerical_grad, rand, rel_error
from shendu import models, style


def test_gram_sums_products_of_maps_over_positions():
    f = rand(2, 3, 4, 5)
    g = style.gram(f)
    for n in range(2):
        for a in range(3):
            for b in range(3):
                assert g[n, a, b] == pytest.approx((f[n, a] * f[n, b]).sum() / 20)


@pytest.mark.parametrize("name, layers", [("deepconvnet", ((2,), (0, 2, 5))),
                                          ("randomscales", ((0,), (0,)))])
def test_the_gradient_of_the_losses_matches_numerical_differentiation(name, layers):
    shendu.manual_seed(0)
    shape = (1, 12, 12) if name == "deepconvnet" else (3, 12, 12)
    network = models.get(name, input_shape=shape, **({"sizes": (3, 5)}
                                                      if name == "randomscales" else {}))
    network.astype(np.float64)
    content, look = rand(1, *shape, seed=1) ** 2, rand(1, shape[0], 9, 10, seed=2) ** 2
    transfer = style.Transfer(network, content, look, *layers, style_weight=3.0)
    x = rand(1, *shape, seed=3) ** 2

    def loss():
        c, s, _ = transfer(x)
        return c + 3.0 * s

    _, _, analytic = transfer(x)
    entries = np.random.default_rng(4).choice(x.size, 30, replace=False)
    numeric = numerical_grad(loss, x, entries=entries).reshape(-1)[entries]
    assert rel_error(analytic.reshape(-1)[entries], numeric) < 1e-6


def test_descent_moves_the_image_towards_both_targets():
    shendu.manual_seed(0)
    network = models.get("randomscales", input_shape=(3, 16, 16), sizes=(3, 5), width=8)
    rng = np.random.default_rng(5)
    content, look = rng.random((1, 3, 16, 16), np.float32), rng.random((1, 3, 20, 20), np.float32)
    transfer = style.Transfer(network, content, look, (0,), (0,), style_weight=10.0)
    start = rng.random((1, 3, 16, 16), np.float32)
    image, history = transfer.run(start, steps=30, lr=0.05)
    assert image.shape == start.shape and 0 <= image.min() and image.max() <= 1
    (c0, s0), (c1, s1) = history[0], history[-1]
    assert c1 < c0 and s1 < s0
    with pytest.raises(shendu.ShenduError, match="indices"):
        style.Transfer(network, content, look, (1,), (0,), style_weight=1.0)
