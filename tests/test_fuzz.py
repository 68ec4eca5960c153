"""Fuzzing, with Hypothesis, the readers of untrusted bytes: the IDX parser, the checkpoint
loaders (`shendu.load`, and resuming a Trainer from a full checkpoint) and `load_image`.

They get random bytes and mutations of real, valid files (bytes overwritten, inserted, deleted,
the file cut short, a binary length field or a number in a JSON header replaced by one of any
size). Each may only give a result or its documented error, within a deadline (no hang). For the
IDX and checkpoint readers, the memory Python allocates (tracemalloc, which sees NumPy's arrays)
must stay within a small multiple of the files' size; images are bounded before Pillow decodes
them (their size claims are checked against the file size, see test_errors.py)."""
import os
import re
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import shendu
from shendu import datasets, models, nn, optim
from shendu.datasets import DatasetError, read_idx
from test_datasets import to_idx

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch():
    """A folder for the files of each example, in memory where the system has one (fsync of a
    checkpoint is free there: the fuzzing is about parsing, not disks)."""
    folder = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield Path(folder)
    shutil.rmtree(folder)


EDITS = ("set", "insert", "delete", "cut", "word", "number")


@st.composite
def mutated(draw, original, hot=256, edits=EDITS):
    """`original` with one to four edits, favouring the first `hot` bytes (the headers)."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        end = max(len(data), 1)
        pos = draw(st.integers(0, min(hot, end) - 1) | st.integers(0, end - 1))
        kind = draw(st.sampled_from(edits))
        if kind == "set":
            data[pos:pos + 1] = draw(st.binary(min_size=1, max_size=1))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "cut":
            del data[pos:]
        elif kind == "word":  # a length or dimension field: any value, either byte order
            width = draw(st.sampled_from([4, 8]))
            value = draw(st.integers(0, 2 ** (8 * width) - 1))
            data[pos:pos + width] = value.to_bytes(width, draw(st.sampled_from(["big", "little"])))
        else:  # a number in JSON text: shapes, offsets, counters, settings
            found = list(re.finditer(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", bytes(data)))
            if found:
                m = draw(st.sampled_from(found))
                value = draw(st.integers(-2 ** 70, 2 ** 70) | st.sampled_from(
                    [0, 1, -1, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64, 10 ** 30]))
                data[m.start():m.end()] = str(value).encode()
    return bytes(data)


def json_or_bytes(original):
    """Any edits, or (half the time) only numbers changed: JSON that still parses, and a
    safetensors header that still parses, go deeper."""
    return mutated(original) | mutated(original, edits=("number",))


def bounded(read, size, errors, free=2 ** 20):
    """Run read(): it may succeed or raise one of `errors`; Python's peak allocation while it
    runs must stay under 64 bytes per byte of input plus `free` bytes."""
    tracemalloc.start()
    try:
        read()
        event("read")
    except errors as e:
        event(f"refused: {type(e).__name__}")  # --hypothesis-show-statistics shows how many
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= 64 * size + free, f"{peak} bytes allocated for {size} bytes of input"


# -- IDX --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idx_files():
    (x, t), _ = datasets.load_mnist()
    return [to_idx(x[:4, 0]), to_idx(t[:20])]


@FUZZ
@given(data=st.data())
def test_read_idx(idx_files, data):
    raw = data.draw(st.binary(max_size=512) | st.sampled_from(idx_files).flatmap(mutated))

    def read():
        out = read_idx(raw)
        assert out.dtype == np.uint8 and out.nbytes <= len(raw)  # a view of the bytes, no copy
    bounded(read, len(raw), DatasetError)


# -- checkpoints --------------------------------------------------------------------------------
def fuzznet(num_classes=10, input_shape=(1, 4, 4)):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(2 * h * w, num_classes))


@pytest.fixture(scope="module")
def checkpoint(scratch):
    """The files of a run interrupted in its second epoch: model.safetensors, config.json,
    checkpoint.json and the arrays it names."""
    models._REGISTRY["fuzznet"] = fuzznet
    rng = np.random.default_rng(0)
    train = rng.random((20, 1, 4, 4), dtype=np.float32), rng.integers(0, 10, 20)
    run = scratch / "original"

    def trainer(run_dir=None):
        shendu.manual_seed(0)
        model = models.get("fuzznet", input_shape=(1, 4, 4))
        opt = optim.Adam(model.parameters(), lr=0.01)
        return shendu.Trainer(model, opt, batch_size=10, scheduler=optim.StepLR(opt, 1, 0.5),
                              run_dir=run_dir, progress=False)

    def stop(progress):
        if progress["global_step"] == 3:
            raise KeyboardInterrupt
    trainer(run).fit(train, train, epochs=2, on_step=stop)
    yield {p.name: p.read_bytes() for p in run.iterdir()}, trainer, train
    del models._REGISTRY["fuzznet"]


@FUZZ
@given(data=st.data())
def test_load(checkpoint, scratch, data):
    files, _, _ = checkpoint
    name = data.draw(st.sampled_from(["model.safetensors", "config.json"]))
    run = scratch / "load"
    run.mkdir(exist_ok=True)
    for key in ("model.safetensors", "config.json"):
        (run / key).write_bytes(data.draw(json_or_bytes(files[key])) if key == name else files[key])
    size = sum(len(files[key]) for key in ("model.safetensors", "config.json")) + 64
    # A config.json may describe up to a million weights more than its file holds (so that the
    # weights of another model are named, not just refused): 16 MB at most while they are drawn.
    bounded(lambda: shendu.load(run), size, shendu.CheckpointError, free=20 * 2 ** 20)


@FUZZ
@given(data=st.data())
def test_resume(checkpoint, scratch, data):
    files, trainer, train = checkpoint
    arrays = next(key for key in files if key.startswith("checkpoint-"))
    name = data.draw(st.sampled_from(["checkpoint.json", arrays]))
    run = scratch / "resume"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    for key in ("checkpoint.json", arrays):
        (run / key).write_bytes(data.draw(json_or_bytes(files[key])) if key == name else files[key])
    fresh = trainer()
    size = len(files["checkpoint.json"]) + len(files[arrays]) + 64
    bounded(lambda: fresh.fit(train, train, epochs=2, resume=run), size, shendu.ShenduError)


# -- images -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(scratch):
    """A real MNIST digit as PNG, JPEG, GIF, BMP and TIFF (dark ink on white for some)."""
    _, (x, _) = datasets.load_mnist()
    found = []
    for fmt, im in [("PNG", Image.fromarray(x[0, 0])), ("JPEG", Image.fromarray(255 - x[1, 0])),
                    ("GIF", Image.fromarray(x[2, 0]).convert("P")),
                    ("BMP", Image.fromarray(255 - x[3, 0]).convert("RGB")),
                    ("TIFF", Image.fromarray(x[4, 0]))]:
        path = scratch / f"digit.{fmt.lower()}"
        im.save(path, format=fmt)
        found.append(path.read_bytes())
    return found


MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"P5\n"]


@FUZZ
@given(data=st.data())
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's about damaged files
def test_load_image(images, scratch, data):
    raw = data.draw(st.sampled_from(images).flatmap(mutated)
                    | st.builds(bytes.__add__, st.sampled_from(MAGIC), st.binary(max_size=256))
                    | st.binary(max_size=256))
    path = scratch / "fuzzed.img"
    path.write_bytes(raw)
    try:
        a = shendu.load_image(path)
    except shendu.ShenduError as e:
        event(f"refused: {str(e).split(': ')[1][:20]}")
        return
    event("decoded")
    assert a.shape == (1, 28, 28) and a.dtype == np.float32
    assert np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1
