"""Generating digits (chapter 8): DCGAN (Radford et al. 2016), a generator that turns noise
into images and a discriminator that tells them from real ones, trained against each other
(Goodfellow et al. 2014); and the features of the course's own trained DeepConvNet, in which
generated and real digits are compared (metrics.frechet_distance).

The discriminator D learns to output a large logit for real images and a small one for the
generator's; the generator G learns to make D's logit for its images large: the "non-saturating"
loss −log D(G(z)) of Goodfellow et al., whose gradient is strong where G is still bad. Both use
binary cross-entropy on D's logits. The networks (models "generator" and "discriminator")
are as the paper's: strided convolutions instead of pooling, BatchNorm in both (not on G's
output nor on D's input), ReLU in G with tanh at its output (images in [−1, 1]), LeakyReLU
(0.2) in D; and Adam with lr 2e-4 and β1 = 0.5."""
from dataclasses import dataclass

import numpy as np

from . import kernels, nn, optim
from .train import device_batches, inference, input_batches


def noise(n, latent, seed):
    """n latent vectors (n, latent, 1, 1) from a standard normal, float32, drawn from seed."""
    return np.random.default_rng(seed).standard_normal((n, latent, 1, 1)).astype(np.float32)


def generate(g, z):
    """G's images for latent vectors z, as float32 in [0, 1] (N, C, H, W), in eval mode."""
    with inference(g):
        out = kernels.to_host(g(nn.device_of(g).array(np.asarray(z, np.float32))))
    return (out + 1) / 2


def walk(a, b, steps):
    """Latent vectors on the straight line from a to b (each (latent, 1, 1)), both ends
    included: (steps, latent, 1, 1)."""
    t = np.linspace(0, 1, steps, dtype=np.float32)[:, None, None, None]
    return (1 - t) * np.asarray(a, np.float32)[None] + t * np.asarray(b, np.float32)[None]


@dataclass(frozen=True)
class GAN:
    """DCGAN's training: `epochs` over the images in batches of `batch_size`, each batch a
    step of D (on the real batch and on as many generated images) then a step of G; Adam
    (lr, betas) for both."""
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)

    def fit(self, g, d, images, seed=0, on_epoch=None):
        """Train G and D on images (N, C, H, W), uint8 or float in [0, 1]. Returns one entry
        per epoch: the mean losses of D and G and D's mean probability that real and generated
        images are real. `on_epoch(epoch, entry)` is called after each."""
        rng = np.random.default_rng(seed)
        latent = g[0].in_channels
        opt_g, opt_d = (optim.Adam(m.parameters(), lr=self.lr, betas=self.betas)
                        for m in (g, d))
        bce, K, history = nn.BCEWithLogitsLoss(), nn.device_of(g), []
        g.train(), d.train()
        for epoch in range(1, self.epochs + 1):
            order = rng.permutation(len(images))
            sums = np.zeros(4)
            for _, real in input_batches(images[order], self.batch_size):
                n = len(real)
                fake = g(K.array(rng.standard_normal((n, latent, 1, 1)).astype(np.float32)))
                real = K.array(real * 2 - 1)
                # D: real images are 1, generated 0; its gradients summed over both batches
                d_real, d_fake = self._step_d(d, opt_d, bce, real, fake, K)
                loss_g = self._step_g(g, d, opt_g, bce, fake, K)
                sums += [d_real[0] + d_fake[0], loss_g, d_real[1], d_fake[1]]
            steps = -(-len(images) // self.batch_size)
            entry = dict(zip(("loss_d", "loss_g", "p_real", "p_fake"),
                             (float(v) for v in sums / steps)))
            history.append(entry)
            if on_epoch is not None:
                on_epoch(epoch, entry)
        return history

    @staticmethod
    def _step_g(g, d, opt_g, bce, fake, K):
        """One step of G, whose last output was `fake`: its images should be taken for real,
        and the gradient of that loss flows back through D into G. Returns the loss."""
        loss = bce(d(fake), K.array(np.ones((len(fake), 1), np.float32)))
        g.zero_grad()
        g.backward(d.backward(bce.backward()), input_grad=False)
        opt_g.step()
        return loss

    @staticmethod
    def _step_d(d, opt_d, bce, real, fake, K):
        """One step of D; returns (loss, mean probability of "real") on the real and the
        generated batch."""
        d.zero_grad()
        grads, seen = [], []
        for batch, label in ((real, 1.0), (fake, 0.0)):
            logits = d(batch)
            loss = bce(logits, K.array(np.full((len(batch), 1), label, np.float32)))
            d.backward(bce.backward(), input_grad=False)
            grads.append([kernels.to_host(p.grad).copy() for p in d.parameters()])
            z = kernels.to_host(logits).astype(np.float64)
            seen.append((loss, float(np.mean((1 + np.tanh(z / 2)) / 2))))  # σ(z), stably
        for p, a, b in zip(d.parameters(), *grads):
            p.grad = K.array(a + b)
        opt_d.step()
        return seen


def features(classifier, images, batch_size=500):
    """The classifier's penultimate features of images (N, C, H, W), uint8 or float in
    [0, 1]: the output of every layer before its last Linear (for DeepConvNet, the 50 after
    the first fully connected layer's ReLU), in eval mode. (N, D) float64."""
    layers = list(classifier)
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear))
    out = []
    with inference(classifier):
        for h in device_batches(classifier, images, batch_size):
            for layer in layers[:last]:
                h = layer(h)
            out.append(kernels.to_host(h).astype(np.float64))
    return np.concatenate(out)

