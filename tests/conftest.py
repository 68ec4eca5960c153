"""Shared pytest fixtures and helpers for the book's tests.

The book is built once per test session (``built_book``), in the quick profile, strictly
(``-W -n --keep-going``), in a temporary copy of the repository's book files: nothing is
written into the repository. tests/test_book.py checks the build, tests/test_browser.py reads
the site in Chromium.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# The CUDA kernels are tested in numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 asks for a
# real GPU. numba.cuda reads the setting once, when it is first imported, so it is set here,
# before any test module is imported (a numba imported even earlier, by a plugin, re-reads it).
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if "numba" in sys.modules:
    sys.modules["numba"].core.config.reload_config()
# The simulator runs each GPU thread of a block as a Python thread, and they meet at every
# cuda.syncthreads(): handing the GIL over every 0.5 ms instead of Python's 5 ms halves the time
# of the tiled kernels (two training steps of test_cuda_layers' tiny_net: 30 s → 15 s here).
sys.setswitchinterval(5e-4)
# pytest -n 2 runs two test processes on two cores, and a Numba kernel in either uses both: its
# threads (libgomp's, which Numba and PyTorch use) that wait for work sleep rather than spin, so
# the core goes to the other process. Set before any parallel loop runs; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
import shendu  # noqa: E402,F401  (before any test module imports NumPy: its OpenBLAS setting)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "book" / "_ext"))
from record_exec_times import toc_entries, toc_notebooks  # noqa: E402  (one _toc.yml reader)
from browsing import browser, site  # noqa: E402,F401  (the session's Chromium and served site)
ROOT = REPO_ROOT
BOOK_FILES = ("_config.yml", "_toc.yml", "book", "notebooks")
IGNORE_NAMES = ("_build", ".ipynb_checkpoints", "__pycache__", "runs")
IGNORE = shutil.ignore_patterns(*IGNORE_NAMES)
NOTEBOOK_SECONDS = 600  # a hang guard per cell; the quick budget (60 s) is on the Status page
STRICT = ("-W", "-n", "--keep-going")
# launch buttons of a chapter page -> the repository path of the notebook they open
_REPO = yaml.safe_load((REPO_ROOT / "_config.yml").read_text("utf8"))["repository"]
_ORG_REPO = _REPO["url"].removeprefix("https://github.com/")
LAUNCH_PATTERNS = {
    "Colab": re.compile(rf"https://colab\.research\.google\.com/github/{_ORG_REPO}/blob/"
                        rf"{_REPO['branch']}/(.+)$"),
    "Binder": re.compile(rf"https://mybinder\.org/v2/gh/{_ORG_REPO}/{_REPO['branch']}"
                         r"\?urlpath=lab/tree/(.+)$"),
}


def launch_targets(hrefs) -> dict[str, str]:
    """{"Colab"|"Binder": repository path} from a page's link targets."""
    found = {}
    for href in hrefs:
        for where, pattern in LAUNCH_PATTERNS.items():
            if m := pattern.match(href):
                found[where] = m.group(1)
    return found


TIMINGS: dict[str, float] = {}  # what took how long, printed at the end of the session
XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ  # a worker process of pytest -n


def pytest_runtest_logreport(report):
    """The browser checks' own time: their tests' set-up (every page's visit), calls and
    teardown, not the rest of the session that runs while the browser stays open. Counted where
    the reports arrive: under pytest-xdist, by the controller, not again by the worker."""
    if report.nodeid.startswith("tests/test_browser.py") and not XDIST_WORKER:
        key = "browser checks (Chromium, every page, incl. planted faults)"
        TIMINGS[key] = TIMINGS.get(key, 0.0) + report.duration


def pytest_sessionfinish(session):
    """A pytest-xdist worker hands what its fixtures timed (the book's build) to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["timings"] = TIMINGS


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller, as a worker ends: the worker's timings join the session's."""
    for name, seconds in getattr(node, "workeroutput", {}).get("timings", {}).items():
        TIMINGS[name] = TIMINGS.get(name, 0.0) + seconds


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "book timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


# pytest-xdist (pyproject: pytest -n 2) runs each group below whole on one worker: the tests
# over the built book share one build, the notebooks run from the wheel one wheel environment,
# and every other file its module's fixtures.
BOOK_TEST_FILES = {"test_book.py", "test_browser.py", "test_explorers.py"}


def xdist_group(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    if name.startswith("test_notebook_runs_from_the_wheel"):
        return "wheel"
    return "book" if Path(path).name in BOOK_TEST_FILES else Path(path).name


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):  # a "scope" is a group, handed out in collection order
        def _split_scope(self, nodeid):
            return xdist_group(nodeid)

    return Groups(config, log)


def pytest_collection_modifyitems(items):
    """A test over the built book, or run from the wheel, outside its group would build the book
    or the wheel's environment again on another worker: refused, naming it."""
    for item in items:
        for fixture, group in (("built_book", "book"), ("wheel_python", "wheel")):
            if fixture in item.fixturenames and xdist_group(item.nodeid) != group:
                raise pytest.UsageError(f"{item.nodeid} uses {fixture} but is not in the group "
                                        f"{group!r}: see xdist_group in tests/conftest.py")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives Chromium over the built book (needs chromium + playwright)"
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where pyproject.toml, _config.yml and _toc.yml live)."""
    return REPO_ROOT


# --------------------------------------------------------------------------- the toc
def front_matter(path: Path) -> dict:
    text = path.read_text("utf8")
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0]) or {}


def executed_entries(root: Path = REPO_ROOT) -> list[str]:
    """Pages executed at build time: every toc page whose MyST source declares a kernel."""
    return [e for e in toc_entries(root=root)
            if (root / f"{e}.md").exists() and "kernelspec" in front_matter(root / f"{e}.md")]


# --------------------------------------------------------------------------- building
def jupyter_book_cmd() -> list[str]:
    exe = Path(sysconfig.get_path("scripts")) / "jupyter-book"
    if not exe.exists():
        found = shutil.which("jupyter-book")
        if found is None:
            pytest.skip("jupyter-book is not installed (pip install -e '.[dev]')")
        exe = Path(found)
    return [str(exe)]


def quick_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, SHENDU_PROFILE="quick", PYTHONHASHSEED="0")
    # Let ipykernel choose its inline backend so figures become <img> in the book.
    env.pop("MPLBACKEND", None)
    # the kernels must find the same Python (and shendu) as the build
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def copy_book(dest: Path, root: Path = REPO_ROOT) -> Path:
    """Copy the book's files to dest (over an earlier copy: mtimes are kept, so an unchanged
    file stays unchanged for Sphinx and the execution cache)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / name)
    return dest


@dataclass
class BuildResult:
    book: Path
    returncode: int
    log: str
    seconds: float

    @property
    def html(self) -> Path:
        return self.book / "_build" / "html"

    def tail(self, n: int = 6000) -> str:
        return self.log[-n:]


def build(book_dir: Path, *flags: str, timeout: float) -> BuildResult:
    cmd = [*jupyter_book_cmd(), "build", str(book_dir), *flags]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=book_dir, env=quick_env(), capture_output=True, text=True, timeout=timeout
    )
    return BuildResult(book_dir, proc.returncode, proc.stdout + proc.stderr,
                       time.perf_counter() - start)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BuildResult:
    """The whole book, built once per session: quick profile, strict, in a temporary copy.

    Not asserted here: test_book.py::test_book_builds_quick reports a failed build, and every
    test that needs the site fails with the build log's tail.
    """
    # SHENDU_TEST_BOOK_DIR (development only): build in that folder instead, over the build
    # already there, so that only what changed is executed again
    where = os.environ.get("SHENDU_TEST_BOOK_DIR")
    book = copy_book(Path(where) if where else tmp_path_factory.mktemp("book"))
    n = len(executed_entries())
    result = build(book, *STRICT, timeout=300 + NOTEBOOK_SECONDS * n)
    TIMINGS["book build, quick profile, cold (-W -n --keep-going)"] = result.seconds
    return result


@pytest.fixture(scope="session")
def site_dir(built_book) -> Path:
    """The built site's folder; fails (does not skip) when the build failed."""
    if built_book.returncode != 0 or not (built_book.html / "index.html").exists():
        pytest.fail(f"the book did not build (exit {built_book.returncode}):\n{built_book.tail()}")
    return built_book.html
