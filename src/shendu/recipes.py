"""Recipes: a model and the way to train it, by name (`shendu train --recipe NAME`), or in Python:

    recipe = recipes.get("augment")
    model, history = recipe.fit(train, test, seed=0)       # all of it, in one call; or by parts:
    model = recipe.build_model()
    optimizer, scheduler = recipe.optimizer(model, steps_per_epoch=600)
    trainer = shendu.Trainer(model, optimizer, batch_size=recipe.batch_size,
                             scheduler=scheduler, augment=recipe.augmentation())

A recipe is only settings; what each reaches is measured by experiments that write results
files, never claimed here.
"""
from dataclasses import dataclass, field

from . import augment, models, optim
from .errors import ShenduError
from .rng import manual_seed

__all__ = ["Recipe", "RECIPES", "get", "names"]


@dataclass(frozen=True)
class Recipe:
    about: str
    model: str = "deepconvnet"
    model_options: dict = field(default_factory=dict)
    dataset: str = "mnist"
    optimizer_name: str = "adam"  # "adam", or "sgd" with Nesterov momentum 0.9
    lr: float = 1e-3  # with one_cycle, the peak
    batch_size: int = 100
    epochs: int = 20
    weight_decay: float = 0.0
    one_cycle: bool = False  # warm up to lr over 30% of the steps, then anneal to almost 0
    transforms: tuple = ()  # what each training batch goes through (shendu.augment)

    def build_model(self):
        return models.get(self.model, **self.model_options)

    def optimizer(self, model, steps_per_epoch, lr=None, epochs=None):
        """(optimizer, scheduler or None) for `model`; `lr` and `epochs` override the recipe's."""
        lr, epochs = lr or self.lr, epochs or self.epochs
        if self.optimizer_name == "sgd":
            opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                            weight_decay=self.weight_decay)
        else:
            opt = optim.Adam(model.parameters(), lr=lr, weight_decay=self.weight_decay)
        schedule = (optim.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
                    if self.one_cycle else None)
        return opt, schedule

    def augmentation(self):
        return augment.Compose(*self.transforms) if self.transforms else None

    def fit(self, train, test, seed=0, epochs=None, **fit_options):
        """Train a new model by this recipe: `shendu.manual_seed(seed)` and the Trainer's seed
        make the run repeatable. Returns (model, history); `fit_options` go to `Trainer.fit`."""
        from .train import Trainer
        epochs = epochs or self.epochs
        manual_seed(seed)
        model = self.build_model()
        optimizer, scheduler = self.optimizer(model, -(-len(train[0]) // self.batch_size),
                                              epochs=epochs)
        trainer = Trainer(model, optimizer, batch_size=self.batch_size, scheduler=scheduler,
                          seed=seed, progress=False, augment=self.augmentation())
        return model, trainer.fit(train, test, epochs=epochs, **fit_options)


RECIPES = {
    "book": Recipe("the chapter's recipe: DeepConvNet, Adam lr 0.001, batch 100, 20 epochs"),
    "augment": Recipe(
        "the chapter's DeepConvNet with random rotations (±10°), shifts (±10%), scaling (±10%) "
        "and shear (±10°), Adam with a one-cycle schedule up to lr 0.003, 30 epochs",
        lr=3e-3, epochs=30, one_cycle=True,
        transforms=(augment.RandomAffine(degrees=10, translate=0.1, scale=(0.9, 1.1),
                                         shear=10),)),
    "fashion": Recipe(
        "ResNet-20 on Fashion-MNIST with 2-pixel crops, flips and random erasing; SGD with "
        "Nesterov momentum, weight decay 5e-4 and a one-cycle schedule up to lr 0.1, 15 epochs",
        model="resnet20", dataset="fashion-mnist", optimizer_name="sgd", lr=0.1, batch_size=128,
        epochs=15, weight_decay=5e-4, one_cycle=True,
        transforms=(augment.RandomCrop(2), augment.RandomHorizontalFlip(),
                    augment.RandomErasing())),
}


def names():
    return sorted(RECIPES)


def get(name):
    if name not in RECIPES:
        raise ShenduError(f"unknown recipe {name!r}; choose one of: {', '.join(names())}")
    return RECIPES[name]
