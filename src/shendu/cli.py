"""The command line, for runs too long for a notebook: `python -m shendu` or `shendu`.

    shendu train [--recipe book] [--model NAME] [--epochs N] [--batch-size N] [--lr X]
                 [--seed N] [--subset N] [--target-accuracy X] [--out RUN_DIR]
                 [--checkpoint-every N] [--precision float32|mixed]
    shendu train --resume RUN_DIR [--checkpoint-every N]
    mpiexec -n N shendu train --distributed [--shards S] [--deterministic] [train's flags]
    shendu evaluate RUN_DIR... [--precision float16|bfloat16|int8|binary|...] [--tta N] [--json]
    shendu predict RUN_DIR IMAGE... [--json]
    shendu detect RUN_DIR IMAGE... [--min-score X] [--json]
    shendu segment RUN_DIR IMAGE --out MASK.png
    shendu caption RUN_DIR IMAGE... [--beam N] [--json]
    shendu export RUN_DIR OUT.onnx
    shendu summary MODEL [--input 1x28x28] [--classes 10]
    shendu experiment NAME [--readme] [--only RUN,...]
    shendu bench [--networks NAME,...] [--batches B,...] [--rounds N] [--json FILE]
                 [--no-startup] [--profile]

User errors (bad files, checkpoints, images, no data) print one line `shendu: error: ...` on
stderr and exit with status 2, as do bad arguments (argparse's usage message); Ctrl-C exits with
130. `train` follows SHENDU_PROFILE like the notebooks: with `quick` it trains a small subset.

`train` keeps a full checkpoint in its run directory. Ctrl-C (SIGINT) or SIGTERM stops it at the
end of the step under way, after a checkpoint: it prints how to continue and exits with 130 or
143. `train --resume RUN_DIR` continues the run with the settings it was started with (flags may
repeat them, not change them; --checkpoint-every may change), as if it had never stopped.
"""
import argparse
import json
import math
import sys
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from . import (__version__, applications, bench, datasets, detection, distributed, experiments,
               models, recipes)
from .errors import ShenduError
from .images import load_image, load_scene
from .io import (CHECKPOINT, WEIGHTS, CheckpointError, check_json, load, lock_run_dir,
                 read_checkpoint, write_atomic)
from .rng import manual_seed
from .summarize import summary
from .quantization import at_precision
from .train import Trainer, evaluate, predict_proba


def main(argv=None):
    """Run the command line with `argv` (default: sys.argv[1:]) and return the exit status."""
    args = _parser().parse_args(argv)  # usage errors exit 2 here, argparse's way
    try:
        return args.command(args) or 0
    except ShenduError as e:
        print("shendu: error: " + " ".join(str(e).split()), file=sys.stderr)  # exactly one line
        return 2
    except KeyboardInterrupt:
        print("shendu: interrupted", file=sys.stderr)
        return 130


# -- commands ----------------------------------------------------------------------------------
def _train(args):
    if not args.distributed:
        if args.shards is not None or args.deterministic:
            raise ShenduError("--shards and --deterministic go with --distributed")
        return _train_in(args, None)
    comm = distributed.world()
    try:
        return _train_in(args, comm)
    except ShenduError:
        if comm.Get_rank():  # every rank raises it; rank 0 says it
            return 2
        raise


def _train_in(args, comm):
    """`train`, in one process (comm None) or in every rank of the MPI communicator comm, where
    rank 0 alone reads the settings, holds the run directory and reports."""
    root = comm is None or comm.Get_rank() == 0
    settings = distributed.on_root(comm, lambda: _settings(args))
    recipe = recipes.get(settings["recipe"])
    manual_seed(settings["seed"])
    model = models.get(settings["model"], **settings["model_options"])
    name = settings["model"] = model.config["model"]
    out = args.resume or args.out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with ExitStack() as held:
        distributed.on_root(comm, lambda: _claim(held, out, args))
        distributed.on_root(comm, lambda: datasets.load(recipe.dataset) and None)  # 1 download
        (x, t), test = recipe.data(model)
        if recipe.backbone_epochs and not args.resume:
            if root:
                print(f"training the backbone: DeepConvNet on MNIST's digits, "
                      f"{recipe.backbone_epochs} epochs of the book recipe", flush=True)
            recipe.start(model, settings["seed"])
        if settings["subset"] is not None:
            x, t = x[:settings["subset"]], t[:settings["subset"]]
        epochs, target = settings["epochs"], settings["target_accuracy"]
        options = {} if comm is None else {"comm": comm, "shards": args.shards,
                                           "deterministic": args.deterministic}
        trainer = recipe.trainer(model, len(x), epochs=epochs, lr=settings["lr"],
                                 batch_size=settings["batch_size"], seed=settings["seed"],
                                 trainer_class=(_CommandLineTrainer if comm is None
                                                else _CommandLineDistributedTrainer),
                                 run_dir=out, progress=sys.stderr.isatty(),
                                 checkpoint_every=settings["checkpoint_every"], settings=settings,
                                 precision=settings["precision"], **options)
        if not root:  # rank 0 reports
            trainer.fit((x, t), test, epochs=epochs, target_accuracy=target)
            return 0 if trainer.stopped is None else 128 + trainer.stopped
        ranks = "" if comm is None else (f", {comm.Get_size()} ranks x {trainer.threads} "
                                         f"thread{'s' * (trainer.threads > 1)}")
        print(f"{'resuming' if args.resume else 'training'} {name} "
              f"({model.num_parameters():,} parameters) on {len(x)} {_what(recipe)}, "
              f"recipe {settings['recipe']}: "
              f"{type(trainer.optimizer).__name__} lr {settings['lr']:g}"
              f"{' one-cycle' if trainer.scheduler else ''}, batch {settings['batch_size']}, "
              f"{epochs} epoch{'s' if epochs > 1 else ''}"
              f"{f' or until {target:.2%}' if target else ''}, seed {settings['seed']}{ranks}"
              f"{', mixed precision' if settings['precision'] == 'mixed' else ''} "
              f"-> {out}", flush=True)

        def report(m):
            print(f"epoch {m['epoch']:>3}  loss {m['train_loss']:.4f}  "
                  f"train {100 * m['train_acc']:.2f}%  test {100 * m['test_acc']:.2f}%  "
                  f"lr {m['lr']:.3g}  {m['epoch_time']:.1f} s  {m['images_per_s']:.0f} img/s",
                  flush=True)

        history = trainer.fit((x, t), test, epochs=epochs, on_epoch=report, resume=args.resume,
                              target_accuracy=target)
        if trainer.stopped is not None:
            return 128 + trainer.stopped  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
        last = history[-1]
        if target and last["test_acc"] >= target:
            print(f"reached {target:.2%} after epoch {last['epoch']}, {last['elapsed']:.1f} s of "
                  "training and testing")
        print(f"test accuracy {100 * last['test_acc']:.2f}%; model, config and metrics in {out}")


def _what(recipe):
    """What a recipe trains on, in prose: "MNIST images", "MNIST scenes", ..."""
    return {"classify": f"{datasets.describe(recipe.dataset)[0]} images",
            "regions": "regions of MNIST scenes"}.get(recipe.task, "MNIST scenes")


def _settings(args):
    """The run's settings: from --resume's checkpoint, or the recipe and the flags."""
    if args.resume is not None:
        return _resumed_settings(args)
    return recipes.settings(
        args.recipe or "book", 0 if args.seed is None else args.seed, model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, subset=args.subset,
        checkpoint_every=args.checkpoint_every, target_accuracy=args.target_accuracy,
        precision=args.precision or "float32")


def _claim(held, out, args):
    """Hold the run directory (in `held`, an ExitStack) for this run: a new run never
    overwrites another."""
    held.enter_context(lock_run_dir(out))  # before the check: two runs at once cannot both pass
    if args.resume is None and ((out / WEIGHTS).exists() or (out / CHECKPOINT).exists()):
        raise ShenduError(f"{out} already holds a run: choose another --out, or continue it "
                          f"with --resume {out}")


class _CommandLineTrainer(Trainer):
    def resume_hint(self):
        return f"Continue with: shendu train --resume {self.run_dir}"


class _CommandLineDistributedTrainer(distributed.DistributedTrainer):
    resume_hint = _CommandLineTrainer.resume_hint


# What `train` records in its checkpoints' "settings", to resume from them.
_SETTINGS = {"model": str, "model_options": dict, "recipe": str, "epochs": int,
             "batch_size": int, "lr": float,
             "seed": int, "subset": (int, None), "checkpoint_every": (int, None),
             "target_accuracy": (float, None), "precision": str}


def _resumed_settings(args):
    """The settings of the run in --resume RUN_DIR; flags may repeat them but not change them,
    except --checkpoint-every."""
    meta, _ = read_checkpoint(args.resume)
    trainer = meta.get("trainer")
    settings = trainer.get("settings") if isinstance(trainer, dict) else None
    if settings is None:
        raise CheckpointError(f"{args.resume} was not trained by `shendu train`: continue it in "
                              "Python with Trainer.fit(..., resume=...)")
    settings.setdefault("model_options", {})  # runs from before recipes had model options
    settings.setdefault("precision", "float32")  # runs from before mixed precision
    check_json(settings, _SETTINGS, f"{args.resume / CHECKPOINT} (settings)")
    if settings["precision"] not in ("float32", "mixed"):
        raise CheckpointError(f"{args.resume}: unknown precision {settings['precision']!r} in "
                              "its settings")
    if settings["recipe"] not in recipes.RECIPES:
        raise CheckpointError(f"{args.resume}: unknown recipe {settings['recipe']!r} in its "
                              f"settings; known: {', '.join(recipes.names())}")
    if (settings["seed"] < 0 or not settings["lr"] > 0
            or any(settings[k] is not None and settings[k] < 1
                   for k in ("epochs", "batch_size", "subset", "checkpoint_every"))):
        raise CheckpointError(f"{args.resume}: its settings are out of range: {settings}")
    for flag in ("model", "recipe", "epochs", "batch_size", "lr", "seed", "subset",
                 "target_accuracy", "precision"):
        given = getattr(args, flag)
        if flag == "model" and given is not None:
            given = given.lower()  # as models.get reads it
        if given is not None and given != settings[flag]:
            raise ShenduError(f"--{flag.replace('_', '-')} {given} conflicts with the run in "
                              f"{args.resume} ({settings[flag]}): a resumed run keeps its settings")
    if args.out is not None and args.out.resolve() != args.resume.resolve():
        raise ShenduError(f"--out {args.out} conflicts with --resume {args.resume}: a resumed run "
                          "stays in its directory")
    if args.checkpoint_every is not None:
        settings["checkpoint_every"] = args.checkpoint_every
    return settings


def _recipe_of(run_dir):
    """The name of the recipe a run directory was trained with (from its checkpoint's settings,
    which `shendu train` and the recipes experiment keep; `book` for other models), and the
    recipe."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return "book", recipes.get("book")
    try:
        settings = json.loads(path.read_text())["trainer"]["settings"]
        name = "book" if settings is None else settings["recipe"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({e}): cannot tell which "
                              "data the run was trained on") from None
    try:
        return name, recipes.get(name)
    except ShenduError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _evaluate(args):
    members = [load(run_dir) for run_dir in args.run_dirs]  # an ensemble when more than one
    (name, recipe), *others = [_recipe_of(run_dir) for run_dir in args.run_dirs]
    if recipe.task != "classify":
        return _evaluate_scenes(args, members, recipe)
    for run_dir, (other, r) in zip(args.run_dirs[1:], others):
        if r.dataset != recipe.dataset or (args.tta and repr(r.augmentation())
                                           != repr(recipe.augmentation())):
            raise ShenduError(f"{run_dir} was trained by recipe {other}, {args.run_dirs[0]} by "
                              f"{name}: an ensemble needs one dataset"
                              + (" and, with --tta, one augmentation" if args.tta else ""))
    tta = recipe.augmentation() if args.tta else None
    if args.tta and tta is None:
        raise ShenduError(f"--tta augments as the run was trained, and recipe {name} has no "
                          "augmentation")
    (x_train, _), (x, t) = datasets.load(recipe.dataset)
    members = [at_precision(m, args.precision, x_train[:CALIBRATION]) for m in members]
    accuracy = evaluate(members if len(members) > 1 else members[0], x, t, tta=tta,
                        copies=args.tta or 1)
    if args.json:
        print(json.dumps({"accuracy": accuracy, "n": len(x), "dataset": recipe.dataset,
                          "split": "test", "models": len(members), "tta": args.tta or 0,
                          "precision": args.precision}))
    else:
        how = [f"{len(members)} models' averaged probabilities"] * (len(members) > 1) + \
              [f"{args.tta} augmented views"] * bool(args.tta) + \
              [PRECISIONS[args.precision]] * (args.precision != "float32")
        print(f"accuracy {100 * accuracy:.2f}% on the {len(x)} "
              f"{datasets.describe(recipe.dataset)[0]} test images"
              + (f" ({' and '.join(how)})" if how else ""))


def _evaluate_scenes(args, members, recipe):
    """`evaluate` of a scene network, on the 1,000 test scenes: as its task is measured."""
    if len(members) > 1 or args.tta or args.precision != "float32":
        raise ShenduError(f"a {recipe.task} run is evaluated alone, in float32 (no ensembles, "
                          "--tta or --precision)")
    test = datasets.mnist_scenes("test", recipe.scenes[1])
    report, _ = applications.measure(recipe.task, members[0], test)
    if recipe.task == "segment":
        text = f"mean IoU {report['miou']:.3f} over the 11 classes"
    elif recipe.task == "caption":
        text = (f"exact captions {report['exact_greedy']:.2%} greedy, "
                f"{report['exact_beam3']:.2%} with a beam of 3")
    else:
        text = f"mAP {report['map']:.3f} (VOC, IoU 0.5)"
    if args.json:
        print(json.dumps({**report, "task": recipe.task, "n": len(test.images),
                          "dataset": "mnist-scenes", "split": "test"}))
    else:
        print(f"{text} on the {len(test.images)} test scenes")


CALIBRATION = 500  # training images that calibrate int8 activations
# How `evaluate` describes each of quantization.PRECISIONS.
PRECISIONS = {"float64": "weights and activations in float64", "float32": "",
              "float16": "weights and activations in float16",
              "bfloat16": "weights and activations in bfloat16",
              "int8": f"int8 weights and products, calibrated on {CALIBRATION} training images",
              "binary": "binary weights, binarized after training"}


def _predict(args):
    model = load(args.run_dir)
    classes = datasets.describe(_recipe_of(args.run_dir)[1].dataset)[1]
    images = [load_image(path) for path in args.images]  # every image checked before any work
    proba = predict_proba(model, images)
    results = []
    for path, p in zip(args.images, proba):
        k = int(p.argmax())
        label = classes[k] if k < len(classes) else str(k)
        results.append({"path": str(path), "class": k, "label": label,
                        "probability": float(p[k])})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['path']}: {r['label']} ({100 * r['probability']:.1f}%)")


def _scene_model(run_dir, task):
    """The network of a run trained to `task` ("detect", "segment" or "caption"); for "detect"
    a grid detector's or, from a run of the regions recipe, an R-CNN around its classifier."""
    model, (_, recipe) = load(run_dir), _recipe_of(run_dir)
    if task == "detect" and recipe.task == "regions":
        return detection.RCNN(model)
    if models.task(model.config["model"]) != task:
        raise ShenduError(f"{run_dir} holds a {model.config['model']} network, which does not "
                          f"{task}: train one with `shendu train --recipe {task}`")
    return model


def _scenes(paths):
    """The image files as the scene networks take them; every file read before any work."""
    scenes = [load_scene(path) for path in paths]
    return scenes, np.stack([scene.image for scene in scenes])


def _detect(args):
    detector = _scene_model(args.run_dir, "detect")
    scenes, x = _scenes(args.images)
    results = []
    for path, scene, f in zip(args.images, scenes, applications.detect(detector, x)):
        kept = f.scores >= args.min_score
        boxes = np.clip(f.boxes[kept] / scene.scale, 0,
                        [scene.width, scene.height, scene.width, scene.height])
        results.append({"path": str(path), "detections": [
            {"box": [round(float(v), 1) for v in box], "class": int(c), "score": float(p)}
            for box, c, p in zip(boxes, f.classes[kept], f.scores[kept])]})
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results * (not args.json):
        found = ", ".join(f"{datasets.WORDS[d['class']]} ({100 * d['score']:.0f}%) at "
                          f"{d['box']}" for d in r["detections"])
        print(f"{r['path']}: {found or 'no digits'}")


def _segment(args):
    model = _scene_model(args.run_dir, "segment")
    (scene,), x = _scenes([args.image])
    classes = applications.segment(model, x)[0]
    h, w = max(1, round(scene.height * scene.scale)), max(1, round(scene.width * scene.scale))
    mask = Image.fromarray(classes[:h, :w]).resize((scene.width, scene.height),
                                                   Image.Resampling.NEAREST)
    data = BytesIO()
    mask.save(data, format="PNG")
    try:
        write_atomic({args.out: data.getvalue()})
    except OSError as e:
        raise ShenduError(f"cannot write {args.out}: {e}") from None
    found = sorted(set(np.unique(np.asarray(mask)).tolist()) - {0})
    print(f"wrote {args.out}: {scene.width}×{scene.height}, 0 background, d + 1 digit d; "
          f"found {', '.join(datasets.WORDS[c - 1] for c in found) or 'no digits'}")


def _caption(args):
    model = _scene_model(args.run_dir, "caption")
    _, x = _scenes(args.images)
    results = [{"path": str(path), "caption": text}
               for path, text in zip(args.images, applications.caption(model, x, args.beam))]
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results * (not args.json):
        print(f"{r['path']}: {r['caption'] or '(nothing)'}")


def _export(args):
    from .export import OPSET, onnx
    onnx(load(args.run_dir), args.out)
    print(f"wrote {args.out} (ONNX opset {OPSET}): input \"images\" (batch, C, H, W), float32 "
          "pixels in [0, 1]; output \"logits\"")


def _summary(args):
    print(summary(models.get(args.model, num_classes=args.classes, input_shape=args.input)))


def _experiment(args):
    record = experiments.run(args.name, out_dir=args.out, only=args.only)
    print(json.dumps(record["figures"], indent=1)[:2000])
    if args.readme and not experiments.update_readme(record):
        raise ShenduError(f"README.md has no <!-- results:{args.name} --> block to update")


# -- arguments ---------------------------------------------------------------------------------
def _number(kind, allow_zero=False):
    """An argparse type: a finite number of `kind` that is positive (or zero, if allowed)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"must be {'zero or more' if allow_zero else 'positive'}, got {text}")
        return value
    return parse


def _networks(text):
    """An argparse type: names of the benchmark's networks, comma-separated."""
    names = [name.strip().lower() for name in text.split(",")]
    unknown = [name for name in names if name not in bench.NETWORKS]
    if unknown or not text.strip():
        raise argparse.ArgumentTypeError(f"unknown network {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(bench.NETWORKS)}")
    return tuple(names)


def _batches(text):
    """An argparse type: batch sizes, comma-separated, 'small' for each network's own."""
    return tuple(b if b == "small" else _number(int)(b) for b in text.split(","))


def _fraction(text):
    """An argparse type: a number in (0, 1]."""
    value = _number(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1 (an accuracy), got {text}")
    return value


def _shape(text):
    """'1x28x28' → (1, 28, 28)."""
    try:
        shape = tuple(int(s) for s in text.lower().replace("×", "x").split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 1x28x28, got {text!r}")
    return shape


def _parser():
    parser = argparse.ArgumentParser(
        prog="shendu", description="Train, evaluate and inspect the networks of the course.")
    parser.add_argument("--version", action="version", version=f"shendu {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model by a recipe into a run directory")
    p.add_argument("--model", help="model name (default: the recipe's)")
    about = "; ".join(f"{name}: {recipes.RECIPES[name].about}" for name in recipes.names())
    p.add_argument("--recipe", choices=recipes.names(),
                   help=about.replace("%", "%%") + " (default: book)")  # argparse formats help
    p.add_argument("--epochs", type=_number(int), help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=_number(int), help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=_number(float), help="learning rate (default: the recipe's)")
    p.add_argument("--seed", type=_number(int, allow_zero=True),
                   help="seed for weights, dropout and data order (default: 0)")
    p.add_argument("--subset", type=_number(int),
                   help="train on the first N training images only (the test set stays whole)")
    p.add_argument("--out", type=Path, metavar="RUN_DIR",
                   help="run directory (default: runs/<model>-<timestamp>)")
    p.add_argument("--target-accuracy", type=_fraction, metavar="X",
                   help="stop after the first epoch whose test accuracy reaches X (e.g. "
                        "0.994): a time-to-accuracy run, stopped by the test set")
    p.add_argument("--checkpoint-every", type=_number(int), metavar="N",
                   help="also write a full checkpoint every N steps (default: after each epoch)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR, with its settings")
    p.add_argument("--precision", choices=("float32", "mixed"),
                   help="float32 (default), or mixed: float16 activations and gradients, "
                        "float32 weights, dynamic loss scaling")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel on MPI: run under mpiexec -n N (needs shendu[mpi])")
    p.add_argument("--shards", type=_number(int), metavar="S",
                   help="with --distributed: cut each batch into S pieces, a multiple of the "
                        "number of ranks (default: one per rank)")
    p.add_argument("--deterministic", action="store_true",
                   help="with --distributed: add the shards' gradients in a fixed order, so "
                        "that any number of ranks dividing --shards gives the same weights")
    p.set_defaults(command=_train)

    p = commands.add_parser("evaluate", help="test accuracy of trained models (more than one: "
                                             "their ensemble)")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                   help="float64, float32 (the default), float16 or bfloat16: weights and "
                        "activations stored in that type; int8: weights and products in int8, "
                        f"calibrated on {CALIBRATION} training images; binary: binary weights")
    p.add_argument("--tta", type=_number(int), metavar="N",
                   help="also average over N views augmented as the run was trained")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(command=_evaluate)

    p = commands.add_parser("predict", help="classify image files (PNG, JPEG, ...)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(command=_predict)

    p = commands.add_parser("detect", help="find digits in image files: boxes, classes, scores")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--min-score", type=_fraction, default=0.5, metavar="X",
                   help="report detections scoring at least X (default 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(command=_detect)

    p = commands.add_parser("segment", help="label each pixel of an image file: a PNG of "
                                            "classes (0 background, d + 1 digit d)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--out", type=Path, required=True, metavar="MASK.png")
    p.set_defaults(command=_segment)

    p = commands.add_parser("caption", help="write the digits of image files, left to right")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--beam", type=_number(int), default=3, metavar="N",
                   help="beam search over N partial captions (default 3; 1: greedy)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(command=_caption)

    p = commands.add_parser("export", help="write a trained model as an ONNX file")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("out", type=Path, metavar="OUT.onnx")
    p.set_defaults(command=_export)

    p = commands.add_parser("summary", help="layers, output shapes and parameters of a model")
    p.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(models.names())}")
    p.add_argument("--input", type=_shape, default=(1, 28, 28), metavar="CxHxW",
                   help="input shape (default: 1x28x28)")
    p.add_argument("--classes", type=_number(int), default=10, metavar="N",
                   help="number of classes (default: 10; 1000 for ImageNet)")
    p.set_defaults(command=_summary)

    p = commands.add_parser("experiment", help="run a long experiment, write its NAME.json "
                                               "(default: into the checkout's notebooks/results)")
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(experiments.names())}")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write DIR/NAME.json (default: notebooks/results of the checkout of the "
                        "course that holds the current folder)")
    p.add_argument("--readme", action="store_true", help="also rewrite README.md's results block")
    p.add_argument("--only", type=lambda text: text.split(","), metavar="RUN[,RUN...]",
                   help="rerun only these of the experiment's runs, keep the others' results")
    p.set_defaults(command=_experiment)

    p = commands.add_parser("bench", help="shendu vs PyTorch on this machine, each engine in "
                                          "fresh processes of its own, alternating")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--profile", action="store_true",
                   help="time per layer (forward, backward), optimizer and data pipeline instead")
    p.add_argument("--networks", type=_networks, default=tuple(bench.NETWORKS),
                   metavar="NAME[,NAME...]",
                   help=f"the networks to measure (default: {','.join(bench.NETWORKS)})")
    p.add_argument("--batches", type=_batches, default=("small", 256), metavar="B[,B...]",
                   help="batch sizes; 'small' is each network's own, 100 or 128 "
                        "(default: small,256)")
    p.add_argument("--rounds", type=_number(int), default=3,
                   help="fresh processes per engine, alternating (default 3)")
    p.add_argument("--no-startup", action="store_true",
                   help="skip timing a fresh process's first steps (compiling, then cached)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both engines run (cuda: shendu's numba.cuda kernels against "
                        "PyTorch CUDA on the same GPU; default cpu)")
    p.set_defaults(command=bench.main)
    return parser
