"""Every kind of bad input, one clear error: the message; on the command line, exit status 2 and one
line on stderr; and every file that was there before unchanged, byte for byte.

The kinds, and where the finer cases of each are tested:
- bad model.safetensors / config.json, weights of another model, lying headers: here through
  `shendu evaluate` (every case of test_io.py's table), and in test_io.py through `shendu.load`;
- bad full checkpoints (checkpoint.json and its arrays): here through `shendu train --resume`,
  and in test_resume.py through `Trainer.fit(resume=...)`;
- bad images (not an image, empty, a bomb, odd modes): here and in test_io.py;
- a dataset file failing its checksum: here through the command line, in test_datasets.py for
  the loader (rejected, never used; a bad cached copy is fetched again);
- a full disk and a read-only run directory: here (full disk) and in test_cli.py (a really
  read-only directory, written by a process without the right to override permissions), and in
  test_resume.py for the checkpoints of a training run;
- unknown names, nonsense settings, inputs of the wrong shape or dtype: here.
"""
import errno
import json
import os
import re
import signal
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import shendu
from shendu import cli, datasets, models, nn, optim
from test_io import BAD, corrupt, png_header, tinybn


@pytest.fixture(autouse=True)
def full_profile(monkeypatch):
    monkeypatch.delenv("SHENDU_PROFILE", raising=False)


def snapshot(*folders):
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file()}


def cli_error(capsys, *args):
    """Run the command line in-process; it must exit 2 with one `shendu: error:` line."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert status == 2, (status, out, err)
    assert len(lines) == 1 and lines[0].startswith("shendu: error: "), err
    return lines[0]


def usage_error(capsys, *args):
    """A bad argument: argparse's message and exit status 2."""
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in args])
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


# -- model.safetensors and config.json -----------------------------------------------------
@pytest.mark.parametrize("what, message", BAD, ids=[b[0] for b in BAD])
def test_bad_checkpoint_on_the_command_line(monkeypatch, tmp_path, capsys, what, message):
    monkeypatch.setitem(models._REGISTRY, "tinybn", tinybn)
    shendu.save(models.get("tinybn", input_shape=(1, 8, 8)), tmp_path)
    corrupt(what)(tmp_path)
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, "evaluate", tmp_path, "--json")
    assert snapshot(tmp_path) == before


def test_config_describing_a_model_larger_than_its_weights_allocates_nothing(tmp_path):
    """A config.json can name any size; the weights file beside it bounds what is built."""
    shendu.save(models.get("deepconvnet"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_classes": 10 ** 12}))
    with pytest.raises(shendu.CheckpointError, match="far larger than the weights"):
        shendu.load(tmp_path)


# -- full checkpoints: shendu train --resume -------------------------------------------------
class Interrupt(nn.Module):
    """Sends this process SIGINT during the given training forward pass, as Ctrl-C would."""

    at = [0]  # which pass (0: never), read when the model is built

    def __init__(self):
        super().__init__()
        self.at, self.count = Interrupt.at[0], 0

    def forward(self, x):
        if self.training:
            self.count += 1
            if self.count == self.at:
                os.kill(os.getpid(), signal.SIGINT)
        return x

    def backward(self, dy):
        return dy


def clinet(num_classes=10, input_shape=(1, 28, 28)):
    return nn.Sequential(Interrupt(), nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, num_classes))


@pytest.fixture
def interrupted(monkeypatch, tmp_path, capsys):
    """A command-line run stopped by Ctrl-C in its third step."""
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    monkeypatch.setattr(Interrupt, "at", [3])
    run = tmp_path / "run"
    status = cli.main(["train", "--model", "clinet", "--subset", "50", "--batch-size", "10",
                       "--epochs", "1", "--out", str(run)])
    assert status == 130 and f"shendu train --resume {run}" in capsys.readouterr().err
    monkeypatch.setattr(Interrupt, "at", [0])
    return run


def arrays_of(run):
    return run / json.loads((run / "checkpoint.json").read_text())["arrays"]


def edit_json(run, **fields):
    meta = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**meta, **fields}))


RESUME_CASES = {
    "no checkpoint.json": (lambda run: (run / "checkpoint.json").unlink(),
                           "holds no checkpoint to resume from"),
    "empty checkpoint.json": (lambda run: (run / "checkpoint.json").write_bytes(b""),
                              "not valid JSON"),
    "truncated checkpoint.json": (lambda run: (run / "checkpoint.json").write_bytes(
        (run / "checkpoint.json").read_bytes()[:100]), "not valid JSON"),
    "not a checkpoint": (lambda run: (run / "checkpoint.json").write_text('{"model": "x"}'),
                         "is not a shendu checkpoint"),
    "a newer version": (lambda run: edit_json(run, version=3), "has version 3"),
    "arrays elsewhere": (lambda run: edit_json(run, arrays="../../etc/passwd"),
                         "does not name a valid arrays file"),
    "arrays missing": (lambda run: arrays_of(run).unlink(), "is missing"),
    "arrays truncated": (lambda run: arrays_of(run).write_bytes(arrays_of(run).read_bytes()[:-9]),
                         "SHA-256 differs"),
    "arrays corrupted": (lambda run: arrays_of(run).write_bytes(
        arrays_of(run).read_bytes()[:-1] + b"\x00"), "SHA-256 differs"),
    "not from the command line": (lambda run: edit_json(run, trainer={
        **json.loads((run / "checkpoint.json").read_text())["trainer"], "settings": None}),
        "was not trained by `shendu train`"),
    "unknown recipe": (lambda run: edit_json(run, trainer={
        **json.loads((run / "checkpoint.json").read_text())["trainer"],
        "settings": {**json.loads((run / "checkpoint.json").read_text())["trainer"]["settings"],
                     "recipe": "magic"}}), "unknown recipe 'magic'"),
    "weights of another model": (lambda run: edit_json(run, trainer={
        **json.loads((run / "checkpoint.json").read_text())["trainer"],
        "settings": {**json.loads((run / "checkpoint.json").read_text())["trainer"]["settings"],
                     "model": "deepconvnet"}}), "missing: 0.bias, 0.weight"),
}


def test_evaluating_a_run_stopped_in_its_first_epoch(interrupted, capsys):
    before = snapshot(interrupted)
    assert "holds no trained model yet" in cli_error(capsys, "evaluate", interrupted)
    assert snapshot(interrupted) == before


@pytest.mark.parametrize("case", RESUME_CASES)
def test_bad_full_checkpoint_on_resume(interrupted, capsys, case):
    damage, message = RESUME_CASES[case]
    damage(interrupted)
    before = snapshot(interrupted)
    assert message in cli_error(capsys, "train", "--resume", interrupted)
    assert snapshot(interrupted) == before


def no_space(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def disk_full():
    """Call it to fill the disk: from then on, no file can be made durable (os.fsync fails)."""
    with pytest.MonkeyPatch.context() as patch:
        yield lambda: patch.setattr(os, "fsync", no_space)


def test_full_disk_when_resuming_leaves_the_run_as_it_was(interrupted, capsys, disk_full):
    before = snapshot(interrupted)
    disk_full()
    assert "No space left on device" in cli_error(capsys, "train", "--resume", interrupted)
    assert snapshot(interrupted) == before


def test_full_disk_when_starting_writes_nothing(tmp_path, capsys, disk_full):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    disk_full()
    line = cli_error(capsys, "train", "--subset", "20", "--out", tmp_path / "run")
    assert "could not write a checkpoint" in line and "No space left on device" in line
    assert snapshot(tmp_path) == before and not list((tmp_path / "run").iterdir())


# -- images ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digit")
    shendu.manual_seed(0)
    shendu.save(models.get("deepconvnet"), run)
    return run


BAD_IMAGES = {
    "not an image": (lambda p: p.write_text("a shopping list\n"), "not an image shendu reads"),
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "bomb": (lambda p: p.write_bytes(png_header(100_000, 100_000)), "bomb"),
    "small file, many pixels": (lambda p: p.write_bytes(png_header(2000, 2000)),
                                "cannot come from"),
    "PostScript": (lambda p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
                                           b"showpage\n"), "not an image shendu reads"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_on_the_command_line(digit_run, tmp_path, capsys, case):
    write, message = BAD_IMAGES[case]
    image = tmp_path / "digit.png"
    write(image)
    before = snapshot(digit_run, tmp_path)
    assert message in cli_error(capsys, "predict", digit_run, image)
    assert snapshot(digit_run, tmp_path) == before


ODD_MODES = {  # mode: how to make the MNIST digit in it (TIFF holds them all)
    "1": lambda d: Image.fromarray(d > 127).convert("1"),
    "I": lambda d: Image.fromarray(d.astype(np.int32) * 1000),
    "F in [0, 1]": lambda d: Image.fromarray(d.astype(np.float32) / 255),
    "F in [0, 255]": lambda d: Image.fromarray(d.astype(np.float32)),
    "LAB": lambda d: Image.fromarray(255 - d).convert("RGB").convert("LAB"),
    "YCbCr": lambda d: Image.fromarray(255 - d).convert("RGB").convert("YCbCr"),
}


@pytest.mark.parametrize("mode", ODD_MODES)
def test_odd_modes_give_the_digit(tmp_path, mode):
    _, (x, _) = datasets.load_mnist()
    ODD_MODES[mode](x[0, 0]).save(tmp_path / "digit.tif")
    a = shendu.load_image(tmp_path / "digit.tif")
    tolerance = 0.05 if mode == "1" else 0.005  # "1" has no grey: edges are cut at half ink
    assert a.shape == (1, 28, 28) and np.abs(a[0] - x[0, 0] / 255).mean() < tolerance


def test_float_image_with_nan_pixels_is_refused(digit_run, tmp_path, capsys):
    _, (x, _) = datasets.load_mnist()
    ink = x[0, 0].astype(np.float32) / 255
    Image.fromarray(np.where(ink > 0.5, np.nan, ink).astype(np.float32)).save(tmp_path / "d.tif")
    before = snapshot(tmp_path)
    assert "some pixels are not numbers (NaN or infinite)" in cli_error(
        capsys, "predict", digit_run, tmp_path / "d.tif")
    assert snapshot(tmp_path) == before


# -- a dataset file failing its checksum -----------------------------------------------------
def test_dataset_failing_its_checksum_is_never_used(digit_run, tmp_path, capsys, monkeypatch):
    """MNIST from a local folder whose training images are damaged, with no other source."""
    (x, t), (x_test, t_test) = datasets.load_mnist()
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    labels = (bytes([0, 0, 8, 1]) + len(t_test).to_bytes(4, "big")
              + t_test.astype(np.uint8).tobytes())
    (data / "t10k-labels-idx1-ubyte").write_bytes(labels[:-1] + bytes([labels[-1] ^ 1]))
    monkeypatch.setenv("SHENDU_DATA", str(data))
    monkeypatch.setenv("SHENDU_CACHE", str(cache))
    monkeypatch.setattr(datasets, "MNIST", replace(datasets.MNIST, mirrors=(), npm_package=None))
    before = snapshot(data)
    line = cli_error(capsys, "evaluate", digit_run)
    assert "t10k-labels-idx1-ubyte: SHA-256 mismatch, not used" in line
    assert snapshot(data) == before
    assert not (cache / "mnist" / "t10k-labels-idx1-ubyte").exists()  # never cached either


# -- names, settings, shapes -------------------------------------------------------------------
def test_unknown_names_list_the_valid_ones(capsys, tmp_path):
    for args in (["summary", "lenet-9000"], ["train", "--model", "lenet-9000", "--out",
                                             tmp_path / "x"]):
        assert "choose one of: bncnn, captioner, deepconvnet" in cli_error(capsys, *args)
    assert ("invalid choice: 'magic' (choose from augment, best, book, caption, detect, "
            "fashion, fast, regions, segment)") in usage_error(
        capsys, "train", "--recipe", "magic").replace("'", "").replace("magic", "'magic'")
    with pytest.raises(datasets.DatasetError, match="unknown dataset 'cifar'; choose one of: "
                                                    "fashion-mnist, mnist"):
        datasets.load("cifar")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["--lr", "-0.001"], "argument --lr: must be positive, got -0.001"),
    (["--lr", "nan"], "argument --lr: must be positive, got nan"),
    (["--batch-size", "0"], "argument --batch-size: must be positive, got 0"),
    (["--epochs", "0"], "argument --epochs: must be positive, got 0"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be positive, got 0"),
])
def test_nonsense_settings_on_the_command_line(capsys, tmp_path, args, message):
    assert usage_error(capsys, "train", *args, "--out", tmp_path / "x").endswith(message)
    assert not (tmp_path / "x").exists()


def test_nonsense_settings_in_python(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    cases = [
        (lambda: optim.Adam(model.parameters(), lr=-0.001), r"learning rate .* got -0.001"),
        (lambda: optim.SGD(model.parameters(), lr=float("nan")), r"learning rate .* got nan"),
        (lambda: optim.Adam(model.parameters(), betas=(0.9, 1.0)), r"β₂ .* got 1.0"),
        (lambda: optim.SGD(model.parameters(), momentum=-1), r"momentum .* got -1"),
        (lambda: optim.StepLR(optim.SGD(model.parameters()), step_size=0), "step_size"),
        (lambda: optim.CosineAnnealingLR(optim.SGD(model.parameters()), T_max=0), "T_max"),
        (lambda: optim.OneCycleLR(optim.SGD(model.parameters()), max_lr=0.1, total_steps=10,
                                  pct_start=0.1), "a phase of no steps"),
        (lambda: shendu.Trainer(model, optim.SGD(model.parameters()), batch_size=0,
                                run_dir=tmp_path / "x"), "batch_size must be a positive integer"),
        (lambda: shendu.Trainer(model, optim.SGD(model.parameters()), checkpoint_every=0,
                                run_dir=tmp_path / "x"), "checkpoint_every must be a positive"),
        (lambda: shendu.Trainer(model, optim.SGD(model.parameters()), checkpoint_every=5),
         "checkpoint_every needs a run_dir"),
        (lambda: shendu.Trainer(model, optim.SGD(model.parameters()), run_dir=tmp_path / "x",
                                progress=False).fit((np.zeros((4, 4), np.float32), np.zeros(4)),
                                                    (np.zeros((4, 4), np.float32), np.zeros(4)),
                                                    epochs=0), "epochs must be a positive"),
    ]
    for make, message in cases:
        with pytest.raises(shendu.ShenduError, match=message):
            make()
    assert not (tmp_path / "x").exists()


def test_inputs_of_the_wrong_shape_or_dtype_name_the_layer(tmp_path, capsys):
    shendu.manual_seed(0)
    model = models.get("deepconvnet")
    trainer = shendu.Trainer(model, optim.Adam(model.parameters()), run_dir=tmp_path / "run",
                             progress=False)
    big = np.zeros((4, 1, 36, 36), np.uint8), np.zeros(4, np.int64)  # 28×28 gives 64·4·4
    with pytest.raises(shendu.ShenduError,
                       match=re.escape("expects input of shape (N, 1024), got (4, 1600)")):
        trainer.fit(big, big)
    flat = np.zeros((4, 784), np.float32)
    with pytest.raises(shendu.ShenduError, match=re.escape(
            "ConvReLU2d(1, 16, kernel_size=3, stride=1, padding=1, bias=True) expects input of "
            "shape (N, 1, H, W), got (4, 784)")):
        shendu.predict_proba(model, flat)
    with pytest.raises(shendu.ShenduError, match="uint8 .* or floating point .* got int64"):
        trainer.fit((big[0].astype(np.int64)[:, :, :28, :28], big[1]), big)
    # On the command line: a model saved for 12×12 inputs, evaluated on MNIST's 28×28.
    small = tmp_path / "small"
    shendu.save(models.get("deepconvnet", input_shape=(1, 12, 12)), small)
    before = snapshot(small)
    line = cli_error(capsys, "evaluate", small)
    assert "Linear(256, 50, bias=True) expects input of shape (N, 256), got (500, 1024)" in line
    assert snapshot(small) == before
