"""The command line, run as users run it (`python -m shendu ...` in a subprocess): a short real
training run, evaluate, predict on image files, summary, and one clear line for every user error."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import shendu
from shendu import cli, datasets, models

# The CLI honours SHENDU_PROFILE like the notebooks; these tests need the real thing.
ENV = {**os.environ, "SHENDU_PROFILE": "full"}


def shendu_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "shendu", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run: DeepConvNet, the book's Adam, batch 50, on 10,000 images for one epoch."""
    run = tmp_path_factory.mktemp("cli") / "run"
    result = shendu_cli("train", "--subset", 10000, "--epochs", 1, "--batch-size", 50,
                        "--out", run)
    assert result.returncode == 0, result.stderr
    return run, result.stdout


def test_train_writes_a_run_directory_and_reports_each_epoch(trained):
    run, stdout = trained
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.csv",
                                                     "model.safetensors"]
    assert json.loads((run / "config.json").read_text())["model"] == "deepconvnet"
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header, one epoch
    assert "123,552 parameters" in stdout and "10000 MNIST images" in stdout
    assert "batch 50" in stdout and "lr 0.001" in stdout
    assert any(line.startswith("epoch   1 ") for line in stdout.splitlines())
    assert "test accuracy" in stdout.splitlines()[-1]


def test_evaluate_json_shows_the_model_learned(trained):
    result = shendu_cli("evaluate", trained[0], "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 10000 and report["dataset"] == "mnist" and report["split"] == "test"
    assert report["accuracy"] > 0.85
    text = shendu_cli("evaluate", trained[0]).stdout
    assert f"{100 * report['accuracy']:.2f}%" in text


def test_predict_reads_digits_from_image_files(trained, tmp_path):
    """The first 20 test images, as MNIST has them and as dark-on-light JPEGs 4× bigger."""
    _, (x, t) = datasets.load_mnist()
    paths, labels = [], []
    for i in range(20):
        Image.fromarray(x[i, 0]).save(tmp_path / f"{i}.png")
        Image.fromarray(255 - x[i, 0]).resize((112, 112)).convert("RGB").save(tmp_path / f"{i}.jpg")
        paths += [tmp_path / f"{i}.png", tmp_path / f"{i}.jpg"]
        labels += [t[i], t[i]]
    result = shendu_cli("predict", trained[0], *paths, "--json")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["path"] for p in predictions] == [str(p) for p in paths]
    for p in predictions:
        assert set(p) == {"path", "class", "label", "probability"}
        assert p["label"] == str(p["class"]) and 0 < p["probability"] <= 1
    right = sum(p["class"] == label for p, label in zip(predictions, labels))
    assert right >= 32, predictions  # most: the model is about 90% right after this short run
    text = shendu_cli("predict", trained[0], paths[0]).stdout
    assert text.startswith(f"{paths[0]}: ")


def test_summary_counts_the_parameters():
    result = shendu_cli("summary", "deepconvnet")
    assert result.returncode == 0, result.stderr
    assert "123,552" in result.stdout and "Conv2d" in result.stdout and "64x4x4" in result.stdout


def test_summary_function_rows():
    rows = shendu.summary(models.get("deepconvnet"))
    assert len(rows) == 21 and rows.total_parameters == 123552
    assert rows[0] == {"name": "0", "type": "Conv2d", "output_shape": (16, 28, 28),
                       "parameters": 16 * 9 + 16}
    assert rows[7]["output_shape"] == (32, 16, 16)  # the convolution that pads by 2
    assert "Total parameters: 123,552" in repr(rows)


# -- user errors: exit status 2, one line on stderr, never a traceback -------------------------
@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("untrained")
    shendu.save(models.get("deepconvnet"), run)
    return run


def user_error_cases(tmp, untrained):
    (tmp / "broken").mkdir()
    (tmp / "broken" / "config.json").write_text('{"model": "deepconvnet"}')
    (tmp / "broken" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp / "notes.png").write_text("not a picture")
    return {
        "no run directory": ["evaluate", tmp / "nowhere"],
        "broken checkpoint": ["evaluate", tmp / "broken", "--json"],
        "missing image": ["predict", untrained, tmp / "missing.png"],
        "not an image": ["predict", untrained, tmp / "notes.png", "--json"],
        "unknown model": ["summary", "lenet-9000"],
        "unknown model to train": ["train", "--model", "lenet-9000", "--out", tmp / "x"],
        "run directory in use": ["train", "--out", untrained],
    }


def usage_error_cases():
    return {
        "no command": [],
        "unknown command": ["fly"],
        "epochs 0": ["train", "--epochs", "0"],
        "batch size 0": ["train", "--batch-size", "0"],
        "negative lr": ["train", "--lr", "-0.1"],
        "lr not a number": ["train", "--lr", "fast"],
        "lr nan": ["train", "--lr", "nan"],
        "subset 0": ["train", "--subset", "0"],
        "negative seed": ["train", "--seed", "-1"],
        "unknown recipe": ["train", "--recipe", "magic"],
        "bad input shape": ["summary", "deepconvnet", "--input", "28x28"],
        "predict without images": ["predict", "runs/x"],
    }


def test_user_errors_are_one_line_and_exit_2(tmp_path, untrained):
    for name, args in user_error_cases(tmp_path, untrained).items():
        result = shendu_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("shendu: error: "), (name, lines)
        assert result.stdout == "", name
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_usage_errors_exit_2_with_argparse_message(capsys):
    """In-process (argparse's own exit), to keep the suite quick; the real entry point is the
    same `main`."""
    for name, args in usage_error_cases().items():
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 2, name
        err = capsys.readouterr().err
        assert "error:" in err.splitlines()[-1] and "Traceback" not in err, (name, err)


def test_bad_number_message_is_clear():
    result = shendu_cli("train", "--batch-size", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "shendu train: error: argument --batch-size: must be positive, got 0")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_summary", interrupted)
    assert cli.main(["summary", "deepconvnet"]) == 130
    assert capsys.readouterr().err == "shendu: interrupted\n"
