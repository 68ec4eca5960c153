"""The command line, run as users run it (`python -m shendu ...` in a subprocess): a short real
training run, evaluate, predict on image files, summary, and one clear line for every user error."""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import shendu
from shendu import cli, datasets, io, models, quantization
from test_errors import Interrupt, clinet, snapshot

# The CLI honours SHENDU_PROFILE like the notebooks; these tests need the real thing.
ENV = {**os.environ, "SHENDU_PROFILE": "full"}


def shendu_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "shendu", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


def test_every_command_explains_itself(capsys):
    commands = [None, "train", "evaluate", "predict", "export", "summary", "experiment", "bench"]
    for command in commands:
        with pytest.raises(SystemExit) as end:
            cli.main([command, "--help"] if command else ["--help"])
        assert end.value.code == 0, command
        assert capsys.readouterr().out.startswith("usage: shendu"), command
    assert "±10%" in shendu_cli("train", "--help").stdout  # the recipes, as written


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
    names = sorted(p.name for p in run.iterdir())
    arrays = [n for n in names if n.startswith("checkpoint-")]  # the full checkpoint's arrays
    assert len(arrays) == 1 and names == sorted(["checkpoint.json", *arrays, "config.json",
                                                 "metrics.csv", "model.safetensors"])
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
    assert report["precision"] == "float32"
    assert list(cli.PRECISIONS) == list(quantization.PRECISIONS)  # a description for each
    for precision in ("float16", "bfloat16", "int8"):  # in 16 bits, or int8: about as good
        result = shendu_cli("evaluate", trained[0], "--precision", precision, "--json")
        assert result.returncode == 0, result.stderr
        low = json.loads(result.stdout)
        assert low["precision"] == precision and abs(low["accuracy"] - report["accuracy"]) < 0.01
    text = shendu_cli("evaluate", trained[0], "--precision", "float16").stdout
    assert "(weights and activations in float16)" in text
    binary = json.loads(shendu_cli("evaluate", trained[0], "--precision", "binary", "--json").stdout)
    assert binary["precision"] == "binary" and 0 <= binary["accuracy"] <= 1


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
    assert "123,552" in result.stdout and "ConvReLU2d" in result.stdout and "64x4x4" in result.stdout


def test_summary_at_imagenet_size_gives_the_published_count():
    result = shendu_cli("summary", "googlenet", "--input", "3x224x224", "--classes", "1000")
    assert result.returncode == 0, result.stderr
    assert "Total parameters: 6,998,552" in result.stdout  # Szegedy et al. 2015, as in the paper
    assert "Field" in result.stdout and "1024" in result.stdout


def test_summary_function_rows():
    rows = shendu.summary(models.get("deepconvnet"))
    assert len(rows) == 21 and rows.total_parameters == 123552
    assert rows[0] == {"name": "0", "type": "ConvReLU2d", "output_shape": (16, 28, 28),
                       "parameters": 16 * 9 + 16, "macs": 28 * 28 * 16 * 9}
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
        "nothing to resume": ["train", "--resume", tmp / "nowhere"],
        "part of a whole experiment": ["experiment", "chapter1", "--only", "x"],
        "bench on a GPU without one": ["bench", "--device", "cuda"],
        "GPU experiment without one": ["experiment", "bench_cuda", "--out", tmp / "results"],
        "export of no run directory": ["export", tmp / "nowhere", tmp / "x.onnx"],
        "export of a broken run": ["export", tmp / "broken", tmp / "x.onnx"],
        "export into no folder": ["export", untrained, tmp / "no" / "such" / "x.onnx"],
        "distributed shards without --distributed": ["train", "--shards", "2"],
        "unknown run of an experiment": ["experiment", "fashion_zoo", "--only", "alexnet"],
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
        "unknown bench network": ["bench", "--networks", "deepconvnet,alexnet"],
        "bench batch 0": ["bench", "--batches", "small,0"],
        "bench rounds 0": ["bench", "--rounds", "0"],
        "unknown precision": ["evaluate", "runs/x", "--precision", "float8"],
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


# -- interrupting and resuming -----------------------------------------------------------------
def start(*args):
    return subprocess.Popen([sys.executable, "-m", "shendu", *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def wait_for_step(run, step, proc):
    """Until the run's checkpoint (replaced atomically: always whole) is at `step` or later."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads((run / "checkpoint.json").read_text())["global_step"] >= step:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{run} made no progress")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A real `shendu train`, stopped with Ctrl-C (SIGINT) after a few steps."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    proc = start("train", "--subset", 200, "--batch-size", 10, "--epochs", 2,
                 "--checkpoint-every", 1, "--out", run)
    wait_for_step(run, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return run, proc.returncode, out, err


def test_ctrl_c_writes_a_checkpoint_and_exits_130(stopped):
    run, status, out, err = stopped
    assert status == 130, err
    meta, _ = io.read_checkpoint(run)
    step = meta["global_step"]
    assert step >= 2 and meta["epoch"]["step"] == step
    assert err.splitlines()[-1] == (f"Training interrupted (SIGINT) in epoch 1 after step {step} "
                                    f"of 20; checkpoint saved in {run}. Continue with: shendu "
                                    f"train --resume {run}")
    assert meta["trainer"]["settings"] == {"model": "deepconvnet", "model_options": {},
                                           "recipe": "book", "epochs": 2,
                                           "batch_size": 10, "lr": 0.001, "seed": 0,
                                           "subset": 200, "checkpoint_every": 1,
                                           "target_accuracy": None, "precision": "float32"}
    assert not (run / "model.safetensors").exists()  # no epoch finished


def test_sigterm_while_resuming_exits_143(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    before = io.read_checkpoint(run)[0]["global_step"]
    proc = start("train", "--resume", run)
    wait_for_step(run, before + 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert out.startswith("resuming deepconvnet (123,552 parameters) on 200 MNIST images")
    assert "Training interrupted (SIGTERM)" in err.splitlines()[-1]
    assert io.read_checkpoint(run)[0]["global_step"] >= before + 2


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "5"], "--epochs 5 conflicts with the run in {run} (2)"),
    (["--lr", "0.01"], "--lr 0.01 conflicts with the run in {run} (0.001)"),
    (["--model", "lenet"], "--model lenet conflicts with the run in {run} (deepconvnet)"),
    (["--subset", "300"], "--subset 300 conflicts with the run in {run} (200)"),
    (["--out", "elsewhere"], "--out elsewhere conflicts with --resume {run}"),
])
def test_resume_refuses_flags_that_change_the_run(stopped, tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    before = snapshot(run)
    assert cli.main(["train", "--resume", str(run), *flags]) == 2
    assert capsys.readouterr().err == f"shendu: error: {message.format(run=run)}: a resumed run " \
        f"{'stays in its directory' if flags[0] == '--out' else 'keeps its settings'}\n"
    assert snapshot(run) == before


@pytest.mark.parametrize("options", [None, {"depth": 9}])
def test_resume_reads_the_model_options(stopped, tmp_path, capsys, options):
    """A run from before recipes had model options resumes as it was trained; options the model
    does not take end with one message, the run untouched."""
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    meta = json.loads((run / io.CHECKPOINT).read_text())
    if options is None:
        del meta["trainer"]["settings"]["model_options"]
    else:
        meta["trainer"]["settings"]["model_options"] = options
    (run / io.CHECKPOINT).write_text(json.dumps(meta))
    before = snapshot(run)
    status = cli.main(["train", "--resume", str(run)])
    if options is None:
        assert status == 0 and shendu.load(run).num_parameters() == 123_552
    else:
        assert status == 2 and snapshot(run) == before
        assert capsys.readouterr().err == ("shendu: error: model 'deepconvnet' has no option "
                                           "'depth'; its options: num_classes, input_shape, "
                                           "dropout\n")


def without_permission_override():
    """For a child running as root: drop CAP_DAC_OVERRIDE from its bounding set, so that after
    exec it is refused writes to a read-only directory like any other user."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def test_read_only_run_directory(stopped, tmp_path):
    """Really read-only (chmod), for a process that cannot override it, root included."""
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    before = snapshot(tmp_path)
    (run).chmod(0o555)
    tmp_path.chmod(0o555)
    root = os.geteuid() == 0
    try:
        for args in (["--resume", run], ["--out", tmp_path / "new"]):
            try:
                result = subprocess.run([sys.executable, "-m", "shendu", "train", *map(str, args)],
                                        capture_output=True, text=True, env=ENV, timeout=300,
                                        preexec_fn=without_permission_override if root else None)
            except subprocess.SubprocessError as e:
                pytest.skip(f"cannot drop the right to override permissions: {e}")
            assert result.returncode == 2, result.stderr
            assert result.stderr.startswith(f"shendu: error: could not write a checkpoint in "
                                            f"{args[1]}: [Errno 13] Permission denied")
    finally:
        tmp_path.chmod(0o755)
        run.chmod(0o755)
    assert snapshot(tmp_path) == before


def test_resumed_command_line_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """Stopped twice by Ctrl-C and resumed twice (in this process, with a small model)."""
    monkeypatch.setitem(models._REGISTRY, "clinet", clinet)
    flags = ["--model", "clinet", "--subset", "60", "--batch-size", "10", "--epochs", "2",
             "--checkpoint-every", "4"]
    assert cli.main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    stopped = tmp_path / "stopped"
    monkeypatch.setattr(Interrupt, "at", [8])  # epoch 2, step 2
    assert cli.main(["train", *flags, "--out", str(stopped)]) == 130
    monkeypatch.setattr(Interrupt, "at", [2])  # two steps later
    assert cli.main(["train", "--resume", str(stopped)]) == 130
    monkeypatch.setattr(Interrupt, "at", [0])
    assert cli.main(["train", "--resume", str(stopped)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(";")[0] for line in err] == [
        "Training interrupted (SIGINT) in epoch 2 after step 2 of 6",
        "Training interrupted (SIGINT) in epoch 2 after step 4 of 6"]
    expected, got = (load_file(d / "model.safetensors") for d in (tmp_path / "whole", stopped))
    assert expected.keys() == got.keys()
    assert all(got[k].tobytes() == expected[k].tobytes() for k in expected)
    rows = [[line.split(",")[:4] for line in (d / "metrics.csv").read_text().splitlines()]
            for d in (tmp_path / "whole", stopped)]
    assert rows[0] == rows[1]


HOLD = ("import sys; from shendu import io\n"
        "with io.lock_run_dir(sys.argv[1]):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    """While another process writes into RUN, every writer here (train, fit, save) stops with
    one line and RUN is untouched; when that process ends, RUN is free again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(run)
        message = f"shendu: error: {run} is in use by another process"
        assert cli.main(["train", "--out", str(run), "--subset", "100", "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and len(err.splitlines()) == 1, err
        model = models.get("deepconvnet")
        with pytest.raises(shendu.ShenduError, match="is in use by another process"):
            shendu.save(model, run)
        with pytest.raises(shendu.ShenduError, match="is in use by another process"):
            trainer = shendu.Trainer(model, shendu.optim.SGD(model.parameters()), run_dir=run,
                                     progress=False)
            trainer.fit((np.zeros((4, 1, 28, 28), np.uint8), np.zeros(4, int)),
                        (np.zeros((2, 1, 28, 28), np.uint8), np.zeros(2, int)))
        assert snapshot(run) == before
    finally:
        holder.communicate("")  # ends the holder, and its lock with it
    shendu.save(model, run)
    with io.lock_run_dir(run), io.lock_run_dir(run):  # reentrant within a process
        shendu.save(model, run)


def test_two_trainings_started_at_once_do_not_share_a_directory(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "shendu", "train", "--out", str(run), "--subset", "200",
            "--epochs", "1", "--batch-size", "50"]
    both = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    assert sorted(status for status, _ in results) == [0, 2], results
    err = next(err for status, err in results if status == 2)
    # the second either met the lock or, if it came late, the finished run
    assert len(err.splitlines()) == 1 and (f"{run} is in use by another process" in err
                                          or f"{run} already holds a run" in err), err
    assert shendu.load(run).num_parameters() == 123_552


def test_a_resumed_folder_is_held_too_and_a_read_only_cache_is_no_obstacle(tmp_path, monkeypatch):
    """fit(run_dir=A, resume=B) writes A and reads B: another process writing B stops it; and
    where the cache cannot be written the locks live in the temporary folder."""
    source, target = tmp_path / "b", tmp_path / "a"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(source)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        model = models.get("deepconvnet")
        trainer = shendu.Trainer(model, shendu.optim.SGD(model.parameters()), run_dir=target,
                                 progress=False)
        data = (np.zeros((4, 1, 28, 28), np.uint8), np.zeros(4, int))
        with pytest.raises(shendu.ShenduError, match=f"{source} is in use"):
            trainer.fit(data, data, resume=source)
        assert not target.exists()
    finally:
        holder.communicate("")
    monkeypatch.setenv("SHENDU_CACHE", "/proc/no-cache-here")
    shendu.save(model, target)
    assert shendu.load(target).num_parameters() == 123_552
