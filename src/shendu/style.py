"""Style transfer (chapter 8, Gatys et al. 2016): an image is changed by gradient descent on its
pixels, through a frozen network, until its features at some layers match a content image's
(the content loss) and the correlations between its feature maps, their Gram matrices, match a
style image's at others (the style loss). The Gram matrix sums over positions, so it keeps
which features occur together and forgets where: texture, not layout.

    L = Σ_l∈content mean((F_l(x) − F_l(c))²) + w · mean_l∈style mean((G_l(x) − G_l(s))²)
    G_l = F Fᵀ / M, F the C maps of layer l as rows of M = H·W positions

Any `Sequential` whose layers take images serves; here, with no network trained on ImageNet
at hand, the course's DeepConvNet trained on MNIST and `models.random_scales`, one layer of
random filters of many sizes, which Ustyuzhaninov et al. (2017) found enough for textures."""
import numpy as np

from . import nn, optim
from .errors import ShenduError


def photograph(size=64):
    """Grace Hopper's portrait, the photograph matplotlib ships as sample data, cropped square
    and resized: RGB (1, 3, size, size) float32 in [0, 1]."""
    from matplotlib import cbook
    from PIL import Image
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        w, h = image.size
        side = min(w, h)
        square = image.convert("RGB").crop((0, 0, side, side))  # her face is in the top part
        return _chw(square.resize((size, size), Image.LANCZOS))


def relief(size=64):
    """A texture: the elevation map of the Jacksboro fault that matplotlib ships as sample data,
    hill-shaded in the gist_earth colours by matplotlib's LightSource, resized: RGB (1, 3,
    size, size) float32 in [0, 1]."""
    import matplotlib
    from matplotlib import cbook
    from matplotlib.colors import LightSource
    from PIL import Image
    elevation = cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"]
    rgb = LightSource(azdeg=315, altdeg=45).shade(elevation, cmap=matplotlib.colormaps[
        "gist_earth"], blend_mode="overlay", vert_exag=0.05)[..., :3]
    image = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    return _chw(image.resize((size, size), Image.LANCZOS))


def _chw(image):
    return (np.asarray(image, np.float32) / 255).transpose(2, 0, 1)[None].copy()


def gram(f):
    """The Gram matrices of feature maps f (N, C, H, W): F Fᵀ / (H W) per image, (N, C, C)."""
    n, c = f.shape[:2]
    rows = f.reshape(n, c, -1)
    return rows @ rows.transpose(0, 2, 1) / rows.shape[2]


def _gram_backward(f, d_gram):
    """dL/df from dL/dG, G = F Fᵀ / M: (dL/dG + dL/dGᵀ) F / M."""
    n, c = f.shape[:2]
    rows = f.reshape(n, c, -1)
    return ((d_gram + d_gram.transpose(0, 2, 1)) @ rows / rows.shape[2]).reshape(f.shape)


class Transfer:
    """The losses of style transfer through `network` (a Sequential, used in eval mode and
    never changed), whose layers `content_layers` and `style_layers` (indices) are compared
    with those of `content` and `style`, images (1, C, H, W) float in [0, 1] of any sizes;
    `style_weight` is w above."""

    def __init__(self, network, content, style, content_layers, style_layers, style_weight):
        self.layers = list(network.eval())
        wanted = (*content_layers, *style_layers)
        if not wanted or min(wanted) < 0 or max(wanted) >= len(self.layers):
            raise ShenduError(f"the layers compared must be indices of the network's "
                              f"{len(self.layers)} layers, got {wanted}")
        self.content_layers, self.style_layers = tuple(content_layers), tuple(style_layers)
        self.style_weight = style_weight
        with nn.no_grad():
            self.content = {i: f for i, f in self._features(content).items()
                            if i in self.content_layers}
            self.style = {i: gram(f) for i, f in self._features(style).items()
                          if i in self.style_layers}

    def _features(self, x):
        out, h = {}, x
        for i, layer in enumerate(self.layers[:max(self.content_layers + self.style_layers)
                                             + 1]):
            h = layer(h)
            out[i] = h
        return out

    def __call__(self, x):
        """(content loss, style loss, dL/dx) at image x, L = content + w · style."""
        f = self._features(x)
        grads, content, style = {}, 0.0, 0.0
        for i in self.content_layers:
            d = f[i] - self.content[i]
            content += float(np.mean(d ** 2))
            grads[i] = 2 * d / d.size
        for i in self.style_layers:
            d = gram(f[i]) - self.style[i]
            share = self.style_weight / len(self.style_layers)
            style += float(np.mean(d ** 2)) / len(self.style_layers)
            g = _gram_backward(f[i], 2 * share * d / d.size)
            grads[i] = grads[i] + g if i in grads else g
        dy = None
        for i in reversed(range(len(f))):
            if i in grads:
                dy = grads[i] if dy is None else dy + grads[i]
            dy = self.layers[i].backward(dy)
        return content, style, dy

    def run(self, start, steps=200, lr=0.02, on_step=None):
        """Adam on the pixels of `start` (1, C, H, W) for `steps`, kept in [0, 1]. Returns the
        image and the losses of every step, [(content, style), ...]; on_step(step, image) is
        called after each."""
        image = nn.Parameter(np.array(start, np.float32))
        opt, history = optim.Adam([image], lr=lr), []
        for step in range(1, steps + 1):
            content, style, image.grad = self(image.data)
            history.append((content, style))
            opt.step()
            np.clip(image.data, 0, 1, out=image.data)
            if on_step is not None:
                on_step(step, image.data)
        return image.data, history
