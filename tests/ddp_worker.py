"""Run by test_distributed.py, in every rank under mpiexec (or alone): trains a model for a few
steps on synthetic images with a DistributedTrainer and writes rank 0's weights to an .npz file,
with whether all ranks ended with the same weights.

    mpiexec -n 2 python tests/ddp_worker.py OUT.npz '{"model": "deepconvnet", "shards": 4}'
"""
import hashlib
import json
import sys

import numpy as np

import shendu
from shendu import augment, distributed, models, optim


def data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def train(options, trainer_class, **extra):
    """The run both sides make: the same seeds, model, optimizer, data and augmentation."""
    shendu.manual_seed(0)
    model = models.get(options.get("model", "deepconvnet"))
    transform = (augment.Compose([augment.RandomCrop(28, padding=2), augment.RandomErasing()])
                 if options.get("augment") else None)
    trainer = trainer_class(model, optim.Adam(model.parameters()), batch_size=100, seed=1,
                            progress=False, augment=transform, **extra)
    trainer.fit(data(options.get("images", 400), 2), data(100, 3), epochs=options.get("epochs", 1))
    return trainer


def main(out, options):
    options = json.loads(options)
    trainer = train(options, distributed.DistributedTrainer, shards=options.get("shards"),
                    deterministic=options.get("deterministic", False))
    state = trainer.model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].tobytes() for k in sorted(state))).hexdigest()
    digests = trainer.comm.gather(digest, root=0)
    if trainer.rank == 0:
        np.savez(out, same_on_all_ranks=len(set(digests)) == 1, ranks=trainer.size,
                 history=json.dumps(trainer.history), **state)


if __name__ == "__main__":
    main(*sys.argv[1:])
