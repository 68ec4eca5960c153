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

from . import augment, models, nn, optim
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

    def build_model(self):
        return models.get(self.model, **dict(self.model_options))

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
            model, opt, nn.CrossEntropyLoss(label_smoothing=self.label_smoothing),
            batch_size=batch_size, scheduler=schedule, seed=seed, augment=self.augmentation(),
            **options)

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
        trainer = self.trainer(model, len(train[0]), epochs=epochs, seed=seed, progress=False,
                               run_dir=run_dir, settings=settings, precision=precision)
        resume = run_dir if run_dir is not None and (Path(run_dir) / CHECKPOINT).exists() else None
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
