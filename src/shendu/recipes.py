"""Recipes: a model and the way to train it, by name (`shendu train --recipe NAME`), or in Python:

    recipe = recipes.get("augment")
    model, history = recipe.fit(train, test, seed=0)
    # or by parts, to keep the trainer (a run directory, checkpoints, callbacks):
    model = recipe.build_model()
    trainer = recipe.trainer(model, train_size=len(train[0]), run_dir="runs/augment")

A recipe is only settings; what each reaches is measured by experiments that write results
files, never claimed here.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import augment, datasets, detection, models, nn, optim
from .errors import ShenduError
from .rng import manual_seed

__all__ = ["Recipe", "RECIPES", "get", "names", "settings"]


@dataclass(frozen=True)
class Recipe:
    about: str
    model: str = "deepconvnet"
    model_options: tuple = ()  # (name, value) pairs for models.get, e.g. (("width", 2.0),)
    dataset: str = "mnist"
    optimizer: str = "adam"  # "adam", or "sgd" with Nesterov momentum 0.9
    lr: float = 1e-3  # with one_cycle, the peak
    batch_size: int = 100
    epochs: int = 20
    weight_decay: float = 0.0
    one_cycle: bool = False  # warm up to lr over 30% of the steps, then anneal to almost 0
    label_smoothing: float = 0.0  # the loss's target: (1 − ε) one-hot + ε / classes
    transforms: tuple = ()  # what each training batch goes through (shendu.augment)
    # "classify" the dataset's images, or learn from MNIST scenes (datasets.mnist_scenes) to
    # "segment" them, "caption" them, "detect" digits (a grid detector) or classify the regions
    # an R-CNN proposes ("regions"); `scenes`: how many training and test scenes
    task: str = "classify"
    scenes: tuple = (0, 0)
    # > 0: the model starts from the chapter's DeepConvNet trained for this many epochs of the
    # book recipe on MNIST's digits (its convolutions, or more: see `start`), as R-CNN, FCN and
    # NIC start from a network trained on ImageNet
    backbone_epochs: int = 0

    def build_model(self):
        return models.get(self.model, **dict(self.model_options))

    def start(self, model, seed=0):
        """Give a new model its starting weights: with backbone_epochs, those of the same network
        built from the trained DeepConvNet (for regions, the classifier itself with a background
        class: `models.with_background`); else it keeps its own. Returns the model."""
        if not self.backbone_epochs:
            return model
        train, test = datasets.load("mnist")
        classifier, _ = RECIPES["book"].fit(train, test, seed=seed, epochs=self.backbone_epochs)
        options = {k: v for k, v in model.config.items() if k != "model"}
        started = (models.with_background(classifier, options["num_classes"])
                   if self.task == "regions" else
                   models.get(model.config["model"], classifier=classifier, **options))
        model.load_state_dict(started.state_dict())
        return model

    def data(self, model=None):
        """((x_train, t_train), (x_test, t_test)) to train on: the dataset's images and labels,
        or for the applications the scenes' images with the labels of the task: the label maps
        (segment), the captions coded by `model.targets` (caption), the grid detector's labels
        (detect, `detection.encode`), or R-CNN's regions (`detection.region_set`)."""
        from .train import QUICK_TEST, QUICK_TRAIN, profile
        if self.task == "classify":
            return datasets.load(self.dataset)
        sizes = (zip(self.scenes, (QUICK_TRAIN, QUICK_TEST)) if profile() == "quick"
                 else zip(self.scenes, self.scenes))  # the quick profile draws fewer scenes
        scenes = [datasets.mnist_scenes(split, min(n, cap))
                  for split, (n, cap) in zip(("train", "test"), sizes)]
        if self.task == "regions":
            return tuple(detection.region_set(s, seed=i) for i, s in enumerate(scenes))
        model = model or self.build_model()
        return tuple((s.images, self._labels(s, model)) for s in scenes)

    def _labels(self, scenes, model):
        if self.task == "segment":
            return scenes.masks.astype(np.int64)
        if self.task == "caption":
            return model.targets(scenes.captions)
        return detection.encode(scenes.boxes, scenes.classes, scenes.images.shape[-1])

    def loss(self):
        """The loss the task trains with (see Trainer: it also counts right answers)."""
        if self.task == "detect":
            return detection.GridLoss()
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def augmentation(self):
        return augment.Compose(list(self.transforms)) if self.transforms else None

    def trainer(self, model, train_size, epochs=None, lr=None, batch_size=None, seed=0,
                trainer_class=None, **options):
        """A Trainer for `model` with this recipe's optimizer, schedule (sized for `epochs` on
        `train_size` images) and augmentation; `epochs`, `lr` and `batch_size` override the
        recipe's, `options` go to the Trainer."""
        from .train import Trainer, planned_steps
        epochs, lr = epochs or self.epochs, lr or self.lr
        batch_size = batch_size or self.batch_size
        if self.optimizer == "sgd":
            opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                            weight_decay=self.weight_decay)
        else:
            opt = optim.Adam(model.parameters(), lr=lr, weight_decay=self.weight_decay)
        schedule = (optim.OneCycleLR(opt, max_lr=lr,
                                     total_steps=planned_steps(train_size, batch_size, epochs))
                    if self.one_cycle else None)
        return (trainer_class or Trainer)(
            model, opt, self.loss(), batch_size=batch_size, scheduler=schedule, seed=seed,
            augment=self.augmentation(), **options)

    def fit(self, train, test, seed=0, epochs=None, run_dir=None, settings=None, device="cpu",
            precision=None, **fit_options):
        """Train a new model by this recipe on `device` ("cpu" or "cuda"): `shendu.manual_seed
        (seed)` and the Trainer's seed make the run repeatable, in the Trainer's `precision`.
        Returns (model, history); `fit_options` go to `Trainer.fit`.
        With `run_dir` the run keeps its checkpoints there, and a run_dir that holds one is
        continued exactly where it stopped (a finished run trains no further); with `settings`
        too (see `settings`), its checkpoints say how it was trained, as `shendu train`'s do.
        An interrupt (Ctrl-C, SIGTERM) stops it with KeyboardInterrupt, and so stops an
        experiment's loop of runs: with a run_dir, the same call continues it later."""
        from .io import CHECKPOINT
        manual_seed(seed)
        model = self.build_model().to(device)
        resume = run_dir if run_dir is not None and (Path(run_dir) / CHECKPOINT).exists() else None
        if resume is None:
            self.start(model, seed)
        trainer = self.trainer(model, len(train[0]), epochs=epochs, seed=seed, progress=False,
                               run_dir=run_dir, settings=settings, precision=precision)
        history = trainer.fit(train, test, epochs=epochs or self.epochs, resume=resume,
                              **fit_options)
        if trainer.stopped is not None:  # the trainer that could continue is not returned
            raise KeyboardInterrupt
        return model, history


# What a handwritten digit may become and stay itself (the augment and best recipes).
DIGITS = augment.RandomAffine(degrees=10, translate=0.1, scale=(0.9, 1.1), shear=10)

AUGMENT = Recipe(
    "the chapter's DeepConvNet with random rotations (±10°), shifts (±10%), scaling (±10%) "
    "and shear (±10°); SGD with Nesterov momentum, weight decay 5e-4 and a one-cycle "
    "schedule up to lr 0.1, 30 epochs",
    optimizer="sgd", lr=0.1, epochs=30, weight_decay=5e-4, one_cycle=True,
    transforms=(DIGITS,))

RECIPES = {
    "book": Recipe("the chapter's recipe: DeepConvNet, Adam lr 0.001, batch 100, 20 epochs"),
    "augment": AUGMENT,
    "best": replace(  # augmented batches regularize already: less dropout
        AUGMENT, about="the augment recipe with half the dropout (0.25)",
        model_options=(("dropout", 0.25),)),
    "fast": Recipe(  # a small network for the least time to 99.4% on 2 cores
        "fastnet (a 5×5 stride-2 first convolution, four convolutions with BatchNorm, 66k "
        "parameters), SGD with Nesterov momentum, weight decay 5e-4 and a one-cycle schedule "
        "up to lr 0.2, label smoothing 0.1, batch 128, 5 epochs, no augmentation",
        model="fastnet", optimizer="sgd", lr=0.2, batch_size=128, epochs=5, weight_decay=5e-4,
        one_cycle=True, label_smoothing=0.1),
    "fashion": Recipe(  # ResNet-20's run in the experiment fashion_zoo, exactly
        "ResNet-20 on Fashion-MNIST with 2-pixel crops and flips; SGD with Nesterov momentum, "
        "weight decay 5e-4 and a one-cycle schedule up to lr 0.1, batch 128, 30 epochs",
        model="resnet20", dataset="fashion-mnist", optimizer="sgd", lr=0.1, batch_size=128,
        epochs=30, weight_decay=5e-4, one_cycle=True,
        transforms=(augment.RandomCrop(28, padding=2), augment.RandomHorizontalFlip())),
    # The applications (chapter 7), on MNIST scenes (datasets.mnist_scenes), each network
    # starting from DeepConvNet trained on MNIST's digits for two epochs.
    "segment": Recipe(
        "FCN-8s on DeepConvNet (fcn): a class per pixel of 64×64 MNIST scenes, 10,000 of them; "
        "Adam lr 0.001, batch 50, 6 epochs",
        model="fcn", task="segment", scenes=(10000, 1000), batch_size=50, epochs=6,
        backbone_epochs=2),
    "caption": Recipe(
        "NIC (captioner): DeepConvNet's features start an LSTM that writes the digits of "
        "80,000 MNIST scenes left to right; Adam with a one-cycle schedule up to lr 0.002, "
        "batch 50, 3 epochs",
        model="captioner", task="caption", scenes=(80000, 1000), batch_size=50, epochs=3,
        lr=2e-3, one_cycle=True, backbone_epochs=2),
    "detect": Recipe(
        "a one-stage grid detector on DeepConvNet (griddetector): boxes and digits of 20,000 "
        "MNIST scenes per 8×8 cell; Adam lr 0.001, batch 50, 10 epochs",
        model="griddetector", task="detect", scenes=(20000, 1000), batch_size=50, epochs=10,
        backbone_epochs=2),
    "regions": Recipe(
        "R-CNN's region classifier: DeepConvNet with a background class, on the regions "
        "proposed in 8,000 MNIST scenes warped to 28×28; Adam lr 0.001, batch 100, 5 epochs",
        model="deepconvnet", model_options=(("num_classes", 11),), task="regions",
        scenes=(8000, 1000), epochs=5, backbone_epochs=2),
}


def names():
    return sorted(RECIPES)


def get(name):
    if not isinstance(name, str) or name not in RECIPES:
        raise ShenduError(f"unknown recipe {name!r}; choose one of: {', '.join(names())}")
    return RECIPES[name]


def settings(name, seed=0, model=None, epochs=None, batch_size=None, lr=None, subset=None,
             checkpoint_every=None, target_accuracy=None, precision="float32"):
    """The settings `shendu train` keeps in a run's checkpoints, for a run of recipe `name`
    (None: the recipe's own): with them the command line can continue the run, and tell which
    data and augmentation it was trained on (`shendu evaluate --tta`). `model` replaces the
    recipe's model and its options together; `subset` is how many of the first training images
    the run used (None: all); `precision` "float32" or "mixed" (see Trainer)."""
    recipe = get(name)
    return {"model": model or recipe.model, "recipe": name,
            "model_options": {} if model else dict(recipe.model_options),
            "seed": seed, "subset": subset, "checkpoint_every": checkpoint_every,
            "target_accuracy": target_accuracy, "precision": precision,
            "epochs": recipe.epochs if epochs is None else epochs,
            "batch_size": recipe.batch_size if batch_size is None else batch_size,
            "lr": recipe.lr if lr is None else lr}
