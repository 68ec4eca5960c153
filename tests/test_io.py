"""Files in and out: checkpoints (round trip; every bad file is one CheckpointError; a failed save
never harms the previous checkpoint) and `load_image` (any image → an MNIST-like digit)."""
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import shendu
from shendu import datasets, models
from shendu.nn import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential


# -- checkpoints -------------------------------------------------------------------------------
def tinybn(num_classes=10, input_shape=(1, 28, 28), width=3):
    """A registered model with buffers (BatchNorm's running statistics) and an extra argument."""
    c, h, w = input_shape
    return Sequential(Conv2d(c, width, 3, padding=1), BatchNorm2d(width), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(width * (h // 2) * (w // 2), num_classes))


X = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "tinybn", tinybn)
    shendu.manual_seed(0)
    m = models.get("tinybn", input_shape=(1, 8, 8), width=3)
    stats = np.random.default_rng(2).random((2, 3), dtype=np.float32) + 0.5
    return m.load_state_dict({**m.state_dict(), "1.running_mean": stats[0],
                              "1.running_var": stats[1]})


@pytest.fixture
def run(model, tmp_path):
    """A run directory holding a good checkpoint of `model`."""
    shendu.save(model, tmp_path)
    return tmp_path


def test_round_trip_restores_weights_buffers_and_outputs(model, run):
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "tinybn" and config["width"] == 3
    assert config["input_shape"] == [1, 8, 8] and config["shendu_version"] == shendu.__version__
    assert_same(shendu.load(run), model)


def test_round_trip_after_training_steps(model, tmp_path):
    """Training updates BatchNorm's running statistics; the checkpoint must still hold them."""
    model(X)
    model(X * 2)
    shendu.save(model, tmp_path)
    assert_same(shendu.load(tmp_path), model)


def assert_same(loaded, model):
    assert not any(m.training for m in loaded.modules())
    before, after = model.state_dict(), loaded.state_dict()
    assert sorted(after) == ["0.bias", "0.weight", "1.bias", "1.running_mean", "1.running_var",
                             "1.weight", "5.bias", "5.weight"]
    assert not np.all(before["1.running_mean"] == 0)  # the buffers carry information
    for name in before:
        assert after[name].dtype == np.float32
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    np.testing.assert_array_equal(loaded(X), model.eval()(X))


def test_deepconvnet_round_trip(tmp_path):
    shendu.manual_seed(3)
    model = models.get("deepconvnet").eval()
    shendu.save(model, tmp_path / "new" / "dir")  # parents are created
    loaded = shendu.load(str(tmp_path / "new" / "dir"))
    assert loaded.num_parameters() == 123552
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))


def st_file(header, data=b""):
    """A safetensors file written by hand: 8-byte little-endian header length, JSON, data."""
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def weights_bytes(run):
    return (run / "model.safetensors").read_bytes()


def corrupt(what):
    """Each case damages a good run directory; the expected message fragment follows it."""
    def apply(run):
        w, c = run / "model.safetensors", run / "config.json"
        good = weights_bytes(run)
        (n,) = struct.unpack("<Q", good[:8])
        if what == "no weights":
            w.unlink()
        elif what == "no config":
            c.unlink()
        elif what == "empty":
            w.write_bytes(b"")
        elif what == "five bytes":
            w.write_bytes(good[:5])
        elif what == "truncated":
            w.write_bytes(good[:-10])
        elif what == "header length lies":
            w.write_bytes(struct.pack("<Q", 2 ** 40) + good[8:])
        elif what == "garbage header":
            w.write_bytes(good[:8] + b"\xff" * n + good[8 + n:])
        elif what == "header not an object":
            w.write_bytes(st_file([1, 2, 3]))
        elif what == "offsets beyond the file":
            w.write_bytes(st_file({"0.bias": {"dtype": "F32", "shape": [3],
                                              "data_offsets": [0, 1200]}}, bytes(12)))
        elif what == "offsets disagree with shape":
            w.write_bytes(st_file({"0.bias": {"dtype": "F32", "shape": [3, 3],
                                              "data_offsets": [0, 12]}}, bytes(12)))
        elif what == "overlapping tensors":
            w.write_bytes(st_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                                   "b": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]}},
                                  bytes(16)))
        elif what == "dtype not a name":
            w.write_bytes(st_file({"0.bias": {"dtype": ["F32"], "shape": [3],
                                              "data_offsets": [0, 12]}}, bytes(12)))
        elif what == "weights a directory":
            w.unlink()
            w.mkdir()
        elif what == "foreign file":
            save_file({"encoder.embed": np.zeros((4, 2), np.float32)}, w)
        elif what == "wrong shape":
            state = shendu.load(run).state_dict()
            state["5.weight"] = np.zeros((10, 7), np.float32)
            save_file(state, w)
        elif what == "integer tensor":
            state = shendu.load(run).state_dict()
            state["0.bias"] = state["0.bias"].astype(np.int32)
            save_file(state, w)
        elif what == "config not JSON":
            c.write_text("{model: tinybn")
        elif what == "config binary":
            c.write_bytes(b"\xff\xfe\x00garbage")
        elif what == "config a list":
            c.write_text("[1, 2]")
        elif what == "config without model":
            c.write_text('{"num_classes": 10}')
        elif what == "unknown model":
            c.write_text('{"model": "resnet9000"}')
        elif what == "unknown argument":
            c.write_text('{"model": "tinybn", "input_shape": [1, 8, 8], "depth": 4}')
        elif what == "bad argument value":
            c.write_text('{"model": "tinybn", "input_shape": "big"}')
    return apply


BAD = [
    ("no weights", "missing"), ("no config", "missing"), ("empty", "empty"),
    ("five bytes", "truncated"), ("truncated", "truncated"), ("header length lies", "truncated"),
    ("garbage header", "corrupted header"), ("header not an object", "corrupted header"),
    ("offsets beyond the file", "truncated"), ("offsets disagree with shape", "corrupted"),
    ("overlapping tensors", "corrupted"), ("dtype not a name", "non-floating-point"),
    ("weights a directory", "cannot read"),
    ("foreign file", "missing: 0.bias"), ("wrong shape", "5.weight: shape (10, 7)"),
    ("integer tensor", "0.bias (I32)"), ("config not JSON", "not valid JSON"),
    ("config binary", "not valid JSON"), ("config a list", '"model"'),
    ("config without model", '"model"'), ("unknown model", "resnet9000"),
    ("unknown argument", "depth"), ("bad argument value", "cannot build"),
]


@pytest.mark.parametrize("what, message", BAD, ids=[b[0] for b in BAD])
def test_every_bad_checkpoint_is_one_clear_error(run, what, message):
    corrupt(what)(run)
    with pytest.raises(shendu.CheckpointError, match=re.escape(message)):
        shendu.load(run)


def test_foreign_file_lists_missing_and_unexpected_names(run):
    corrupt("foreign file")(run)
    with pytest.raises(shendu.CheckpointError) as e:
        shendu.load(run)
    assert "unexpected: encoder.embed" in str(e.value) and "5.weight" in str(e.value)


def test_missing_or_wrong_run_directory(tmp_path):
    with pytest.raises(shendu.CheckpointError, match="does not exist"):
        shendu.load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(shendu.CheckpointError, match="is a file"):
        shendu.load(tmp_path / "file")
    assert issubclass(shendu.CheckpointError, shendu.ShenduError)


@pytest.mark.parametrize("broken", ["replace", "fsync", "write"])
def test_failed_save_leaves_the_previous_checkpoint_intact(model, run, monkeypatch, broken):
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    if broken == "write":  # the disk fills half-way through the temporary file
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[:len(data) // 2])
                fail()
    model[0].bias.data += 1  # change the state, so a successful save would change the files
    with monkeypatch.context() as patch:
        if broken == "write":
            patch.setattr(os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
        else:
            patch.setattr(os, broken, fail)
        with pytest.raises(shendu.CheckpointError, match="No space left"):
            shendu.save(model, run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # no temporary files either
    shendu.load(run)


def test_save_errors(model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(shendu.CheckpointError, match="could not save"):
        shendu.save(model, tmp_path / "file" / "run")
    with pytest.raises(shendu.CheckpointError, match="without a `config`"):
        shendu.save(Sequential(Linear(2, 2)), tmp_path / "run")


def test_saved_file_is_plain_safetensors(run):
    """Other tools read the weights by their dotted names; nothing but tensors is stored."""
    from safetensors.numpy import load_file
    tensors = load_file(run / "model.safetensors")
    assert tensors["5.weight"].shape == (10, 3 * 4 * 4) and tensors["5.weight"].dtype == np.float32


# -- load_image --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digit():
    """A real MNIST test digit (a 7): white on black, 20×20 box, centred by mass."""
    _, (x, t) = datasets.load_mnist()
    assert t[0] == 7
    return x[0, 0]


def mean_abs_diff(a, digit):
    assert a.shape == (1, 28, 28) and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1
    return float(np.abs(a[0] - digit / 255).mean())


def save_as(digit, path, mode):
    """The digit in another encoding; where the mode has no grey, as dark ink on white paper."""
    ink = digit.astype(np.float64) / 255
    if mode == "RGBA":  # black ink whose coverage is alpha, on a fully transparent background
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., 3] = digit
        Image.fromarray(rgba).save(path)
    elif mode == "LA":
        Image.fromarray(np.dstack([np.zeros_like(digit), digit])).save(path)
    elif mode == "I;16":  # 16-bit grey: converting to 8 bits by clipping would make it all white
        Image.fromarray((ink * 65535).round().astype(np.uint16)).save(path)
    elif mode == "P":  # a palette image, dark ink on white paper made transparent
        im = Image.fromarray(255 - digit).convert("RGB").quantize(64)
        im.save(path, transparency=im.getpixel((0, 0)))
    elif mode == "CMYK":  # JPEG is where CMYK appears in practice
        Image.fromarray(255 - digit).convert("CMYK").save(path, quality=100)
    else:  # L, RGB: white paper, dark ink
        Image.fromarray(255 - digit).convert(mode).save(path)


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("RGB", ".png"), ("RGBA", ".png"),
                                          ("LA", ".png"), ("I;16", ".png"), ("P", ".png"),
                                          ("CMYK", ".jpg"), ("RGB", ".jpg")])
def test_any_mode_becomes_the_mnist_digit(digit, tmp_path, mode, suffix):
    path = tmp_path / f"digit{suffix}"
    save_as(digit, path, mode)
    tolerance = 0.03 if suffix == ".jpg" or mode == "P" else 0.005
    assert mean_abs_diff(shendu.load_image(path), digit) < tolerance


def test_the_mnist_digit_itself_is_unchanged(digit, tmp_path):
    Image.fromarray(digit).save(tmp_path / "d.png")
    assert mean_abs_diff(shendu.load_image(tmp_path / "d.png"), digit) < 1e-6


def test_big_photo_of_dark_ink_is_cropped_scaled_and_centred(digit, tmp_path):
    """A 3000×2000 sheet of paper with the digit, 40 times bigger, off-centre."""
    paper = Image.new("RGB", (3000, 2000), (235, 232, 220))
    ink = Image.fromarray(255 - digit).resize((1120, 1120), Image.Resampling.BILINEAR)
    paper.paste(ink.convert("RGB"), (200, 500), Image.fromarray(digit).resize((1120, 1120)))
    paper.save(tmp_path / "photo.jpg", quality=90)
    a = shendu.load_image(tmp_path / "photo.jpg")
    assert mean_abs_diff(a, digit) < 0.06
    rows, cols = np.flatnonzero(a[0].max(axis=1) > 0.2), np.flatnonzero(a[0].max(axis=0) > 0.2)
    assert rows[-1] - rows[0] < 21 and cols[-1] - cols[0] < 21  # fits the 20×20 box
    mass = a[0] / a[0].sum()
    cy, cx = (np.indices((28, 28)) * mass).sum(axis=(1, 2))
    assert abs(cy - 14) < 1.5 and abs(cx - 14) < 1.5


def test_thin_and_tiny_images_still_give_28x28(tmp_path):
    Image.new("L", (3000, 2), 255).save(tmp_path / "line.png")
    Image.new("L", (1, 1), 0).save(tmp_path / "dot.png")
    for name in ("line.png", "dot.png"):
        a = shendu.load_image(tmp_path / name)
        assert a.shape == (1, 28, 28) and np.isfinite(a).all()


def png_header(width, height):
    """A PNG with only a header: enough for a reader to learn the claimed size."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                                0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def bad_image(kind, tmp_path, digit):
    path = tmp_path / "bad.png"
    if kind == "missing":
        return tmp_path / "nothing.png"
    if kind == "directory":
        return tmp_path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(1000))
    elif kind == "text":
        path.write_text("this is not a picture of a digit\n" * 20)
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "bomb":  # 100000² pixels claimed: far beyond Pillow's own limit
        path.write_bytes(png_header(100_000, 100_000))
    elif kind == "too big":  # 8000² = 64 megapixels: under Pillow's limit, over shendu's
        path.write_bytes(png_header(8000, 8000))
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "no such image"), ("directory", "no such image"), ("empty", "empty"),
    ("garbage", "not an image"), ("text", "not an image"), ("truncated", "cannot decode"),
    ("bomb", "bomb"), ("too big", "bomb")])
def test_bad_images_are_one_clear_error(tmp_path, digit, kind, message):
    with pytest.raises(shendu.ShenduError, match=message):
        shendu.load_image(bad_image(kind, tmp_path, digit))
