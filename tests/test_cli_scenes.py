"""The command line of the applications: `train --recipe segment|caption|detect|regions`, then
`detect`, `segment` and `caption` on image files of any size, in the formats the issue fixes,
and one clear line for every user error. Short runs (quick profile): what the trained networks
reach is measured by `shendu experiment applications`, not here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import shendu
from shendu import datasets, models

QUICK = {**os.environ, "SHENDU_PROFILE": "quick"}


def shendu_cli(*args, env=QUICK):
    return subprocess.run([sys.executable, "-m", "shendu", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three test scenes: as drawn (64 × 64), dark on light and 3× larger (192 × 192), and a
    single MNIST digit on a small canvas (40 × 30)."""
    folder = tmp_path_factory.mktemp("scenes")
    scenes = datasets.mnist_scenes("test", 2)
    Image.fromarray(scenes.images[0, 0]).save(folder / "scene.png")
    Image.fromarray(255 - scenes.images[1, 0]).resize((192, 192)).save(folder / "big.jpg")
    small = np.zeros((30, 40), np.uint8)
    small[1:29, 6:34] = datasets.load_mnist()[1][0][0, 0]
    Image.fromarray(small).save(folder / "small.png")
    return [folder / "scene.png", folder / "big.jpg", folder / "small.png"], scenes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run directory per task: untrained networks, as `shendu.save` writes them."""
    folder = tmp_path_factory.mktemp("runs")
    shendu.manual_seed(0)
    for name in ("griddetector", "fcn", "captioner"):
        shendu.save(models.get(name), folder / name)
    return folder


def test_detect_prints_boxes_in_each_images_own_pixels(runs, images):
    paths, _ = images
    result = shendu_cli("detect", runs / "griddetector", *paths, "--json", "--min-score", 1e-6)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [f["path"] for f in found] == [str(p) for p in paths]
    for f, (w, h) in zip(found, [(64, 64), (192, 192), (40, 30)]):
        assert set(f) == {"path", "detections"} and f["detections"]
        for d in f["detections"]:
            assert set(d) == {"box", "class", "score"} and 0 <= d["class"] <= 9
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h and 0 < d["score"] <= 1
    # the big image is scaled by 1/3: its boxes reach beyond 64 pixels
    assert max(d["box"][2] for d in found[1]["detections"]) > 64
    assert shendu_cli("detect", runs / "griddetector", paths[0]).stdout.startswith(
        f"{paths[0]}: ")


def test_segment_writes_a_mask_of_the_images_size(runs, images, tmp_path):
    paths, _ = images
    for path, size in zip(paths, [(64, 64), (192, 192), (40, 30)]):
        out = tmp_path / f"{path.stem}-mask.png"
        result = shendu_cli("segment", runs / "fcn", path, "--out", out)
        assert result.returncode == 0, result.stderr
        with Image.open(out) as mask:
            assert mask.mode == "L" and mask.size == size
            assert np.asarray(mask).max() <= 10
        assert f"wrote {out}" in result.stdout


def test_caption_prints_a_caption_per_image(runs, images):
    paths, _ = images
    for beam in ("1", "3"):
        result = shendu_cli("caption", runs / "captioner", *paths, "--json", "--beam", beam)
        assert result.returncode == 0, result.stderr
        captions = json.loads(result.stdout)
        assert [c["path"] for c in captions] == [str(p) for p in paths]
        for c in captions:
            assert set(c) == {"path", "caption"}
            assert set(c["caption"].split()) <= set(datasets.WORDS)


def test_a_short_training_run_of_each_recipe_then_its_command(tmp_path, images):
    """train --recipe segment (quick: 2,000 scenes, the backbone on 2,000 digits) and regions,
    whose run detect takes as an R-CNN."""
    paths, scenes = images
    result = shendu_cli("train", "--recipe", "segment", "--epochs", "1", "--out",
                        tmp_path / "segment")
    assert result.returncode == 0, result.stderr
    assert "training the backbone" in result.stdout and "2000 MNIST scenes" in result.stdout
    assert json.loads((tmp_path / "segment" / "config.json").read_text())["model"] == "fcn"
    out = tmp_path / "mask.png"
    assert shendu_cli("segment", tmp_path / "segment", paths[0], "--out", out).returncode == 0
    with Image.open(out) as mask:
        predicted = np.asarray(mask)
    assert (predicted == 0).mean() > 0.5  # background, mostly: it has learned that much
    result = shendu_cli("train", "--recipe", "regions", "--epochs", "1", "--subset", "3000",
                        "--out", tmp_path / "regions")
    assert result.returncode == 0, result.stderr
    assert "regions of MNIST scenes" in result.stdout
    result = shendu_cli("detect", tmp_path / "regions", paths[0], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["path"] == str(paths[0])
    reports = {}
    for run, key in (("segment", "miou"), ("regions", "map")):
        result = shendu_cli("evaluate", tmp_path / run, "--json")
        assert result.returncode == 0, result.stderr
        reports[run] = json.loads(result.stdout)
        assert reports[run]["task"] == run and reports[run]["n"] == 1000
        assert 0 <= reports[run][key] <= 1
    # a class for each of the 11, and the background (most pixels) already learnt
    assert len(reports["segment"]["per_class_iou"]) == 11
    assert reports["segment"]["per_class_iou"][0] > 0.8
    result = shendu_cli("evaluate", tmp_path / "segment", "--precision", "int8")
    assert result.returncode == 2 and "evaluated alone" in result.stderr


def test_user_errors_are_one_line_and_exit_2(runs, images, tmp_path):
    paths, _ = images
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "taken.png").write_bytes(b"keep me")
    cases = {
        "no run directory": ["detect", tmp_path / "nowhere", paths[0]],
        "a classifier asked to detect": ["detect", runs / "fcn", paths[0]],
        "a segmenter asked to caption": ["caption", runs / "fcn", paths[0]],
        "a detector asked to segment": ["segment", runs / "griddetector", paths[0], "--out",
                                        tmp_path / "m.png"],
        "missing image": ["caption", runs / "captioner", tmp_path / "missing.png"],
        "not an image": ["detect", runs / "griddetector", tmp_path / "notes.png"],
        "mask into no folder": ["segment", runs / "fcn", paths[0], "--out",
                                tmp_path / "no" / "such" / "m.png"],
    }
    for name, args in cases.items():
        result = shendu_cli(*args)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("shendu: error: "), (name, lines)
        assert "Traceback" not in result.stderr and result.stdout == "", name
    assert (tmp_path / "taken.png").read_bytes() == b"keep me"
    assert not (tmp_path / "m.png").exists()


def test_load_scene_scales_a_larger_image_down_and_keeps_a_smaller_one(tmp_path):
    wide = np.full((64, 128), 255, np.uint8)  # dark ink on white, twice as wide as the canvas
    wide[:32, 64:96] = 0
    Image.fromarray(wide).save(tmp_path / "wide.png")
    scene = shendu.images.load_scene(tmp_path / "wide.png")
    assert scene.image.shape == (1, 64, 64) and scene.image.dtype == np.float32
    assert (scene.scale, scene.width, scene.height) == (0.5, 128, 64)
    ink = scene.image[0] > 0.5  # inverted: the square is light, at half size, top left
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (0, 15, 32, 47)
    assert not scene.image[0, 32:].any()  # below the scaled image: background
    small = np.zeros((30, 40), np.uint8)
    small[10:20, 5:15] = 200
    Image.fromarray(small).save(tmp_path / "small.png")
    scene = shendu.images.load_scene(tmp_path / "small.png")
    assert scene.scale == 1 and scene.image[0, 10:20, 5:15].min() == 1
    assert scene.image[0].sum() == 100  # the rest is background, the canvas too
