"""The executable book: configuration, Jupytext pairs, notebook execution, the build.

Fast tests check the files; tests marked ``slow`` execute notebooks (quick profile) and
build the book with ``jupyter-book`` in a temporary copy, so nothing is written into the
repository.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_SECONDS = 120  # budget for one notebook in the quick profile (DESIGN asks 60 s)
BOOK_FILES = ("_config.yml", "_toc.yml", "book", "notebooks")
IGNORE = shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__", "runs")


# --------------------------------------------------------------------------- helpers
def toc_entries(toc: dict | None = None) -> list[str]:
    """All document paths named in _toc.yml (root first), without extension."""
    toc = toc if toc is not None else yaml.safe_load((ROOT / "_toc.yml").read_text("utf8"))
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def toc_notebooks() -> list[str]:
    return [e for e in toc_entries() if e.startswith("notebooks/")]


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
    env.update(extra)
    return env


def copy_book(dest: Path) -> Path:
    for name in BOOK_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        else:
            shutil.copy2(src, dest / name)
    return dest


def build(book_dir: Path, *flags: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [*jupyter_book_cmd(), "build", str(book_dir), *flags]
    return subprocess.run(
        cmd, cwd=book_dir, env=quick_env(), capture_output=True, text=True, timeout=timeout
    )


def _norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- fast
def test_config_fails_the_build_on_cell_errors():
    config = yaml.safe_load((ROOT / "_config.yml").read_text("utf8"))
    execute = config["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["allow_errors"] is False
    assert execute["raise_on_error"] is True, "a cell error must fail `jupyter-book build .`"
    assert config["only_build_toc_files"] is True
    assert "**.ipynb" in config["exclude_patterns"], "paired .ipynb would duplicate documents"
    assert config["bibtex_bibfiles"] == ["book/references.bib"]


def test_toc_documents_exist():
    for entry in toc_entries():
        candidates = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb", ".rst")]
        assert any(p.exists() for p in candidates), f"_toc.yml names missing {entry}"


def test_toc_has_notebooks():
    assert toc_notebooks(), "_toc.yml lists no notebook"


@pytest.mark.parametrize("entry", toc_notebooks())
def test_notebook_pair_in_sync(entry):
    import jupytext

    md, ipynb = ROOT / f"{entry}.md", ROOT / f"{entry}.ipynb"
    assert md.exists(), f"{md.name}: the reviewed MyST source is missing"
    assert ipynb.exists(), f"{ipynb.name}: the paired notebook (for Colab) is missing"
    text_nb, json_nb = jupytext.read(md), jupytext.read(ipynb)
    formats = text_nb.metadata.get("jupytext", {}).get("formats", "")
    assert "ipynb" in formats and "md" in formats, f"{md.name} is not paired: formats={formats!r}"
    cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
    assert cells(text_nb) == cells(json_nb), (
        f"{entry}: .md and .ipynb differ; run `jupytext --sync {entry}.md`"
    )


def test_citations_resolve():
    bib = (ROOT / "book" / "references.bib").read_text("utf8")
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.M))
    assert keys, "references.bib has no entries"
    sources = [ROOT / f"{e}.md" for e in toc_entries() if (ROOT / f"{e}.md").exists()]
    cite = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
    for path in sources:
        for group in cite.findall(path.read_text("utf8")):
            for key in (k.strip() for k in group.split(",")):
                assert key in keys, f"{path.relative_to(ROOT)} cites unknown key {key!r}"


def test_environment_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf8"))["project"]
    wanted = {}
    for spec in pyproject["dependencies"] + pyproject["optional-dependencies"]["book"]:
        req = Requirement(spec)
        wanted[_norm_name(req.name)] = str(req.specifier)

    env = yaml.safe_load((ROOT / "environment.yml").read_text("utf8"))
    have, pip_specs = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_specs.extend(dep["pip"])
            continue
        name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep).groups()
        have[_norm_name(name)] = spec
    assert "-e ." in pip_specs, "environment.yml must install the package itself (-e .)"
    for spec in pip_specs:
        if spec.startswith("-"):
            continue
        req = Requirement(spec)
        have[_norm_name(req.name)] = str(req.specifier)

    assert have.pop("python", "").startswith("=3."), "environment.yml must pin python"
    have.pop("pip", None)
    assert set(have) == set(wanted), (
        f"environment.yml vs pyproject.toml: only in environment.yml {set(have) - set(wanted)}, "
        f"only in pyproject {set(wanted) - set(have)}"
    )
    for name, spec in wanted.items():  # lower bounds agree where both state them
        if spec and have[name]:
            assert set(spec.split(",")) == set(have[name].split(",")), (name, spec, have[name])


# --------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("entry", toc_notebooks())
def test_notebook_executes_quick(entry, tmp_path, monkeypatch):
    """Each notebook runs top to bottom in the quick profile, in a temporary copy."""
    import jupytext
    from nbclient import NotebookClient

    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work, ignore=IGNORE)
    nb = jupytext.read(work / f"{Path(entry).name}.md")
    for key, value in quick_env(MPLBACKEND="Agg").items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(
        nb, timeout=NOTEBOOK_SECONDS, kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_SECONDS, f"{entry} took {elapsed:.0f} s in the quick profile"


@pytest.mark.slow
def test_book_builds_quick(tmp_path):
    """The real book builds, strictly (any warning fails), with executed outputs."""
    book = copy_book(tmp_path)
    n = len(toc_notebooks())
    result = build(book, "-W", "-n", "--keep-going", timeout=300 + NOTEBOOK_SECONDS * n)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    html_dir = book / "_build" / "html"
    assert (html_dir / "book" / "intro.html").exists()
    outputs = {}
    for entry in toc_notebooks():
        page = (html_dir / f"{entry}.html").read_text("utf8")
        # each executed cell's output area, up to the next cell or the end of the section
        outputs[entry] = [
            re.split(r'<div class="cell |</section>', part, maxsplit=1)[0]
            for part in page.split('<div class="cell_output')[1:]
        ]
        assert outputs[entry], f"{entry}.html has no executed output"
    assert any("<img " in out for out in outputs["notebooks/01_deeper_networks"]), (
        "no figure in the executed output of 01_deeper_networks (is MPLBACKEND=Agg set?)"
    )
    intro = (html_dir / "book" / "intro.html").read_text("utf8")
    assert "<table" in intro and 'id="references"' in intro


@pytest.mark.slow
def test_cell_error_fails_the_build(tmp_path):
    """`jupyter-book build .` (no flags) exits non-zero when a cell raises."""
    shutil.copy2(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=IGNORE)
    (tmp_path / "notebooks").mkdir()
    header = (ROOT / f"{toc_notebooks()[0]}.md").read_text("utf8").split("\n---\n", 1)[0]
    (tmp_path / "notebooks" / "broken.md").write_text(
        header + "\n---\n\n# Broken\n\n"
        "```{code-cell} ipython3\nprint('fine so far')\n```\n\n"
        "```{code-cell} ipython3\nraise RuntimeError('planted failure')\n```\n",
        "utf8",
    )
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/broken\n", "utf8"
    )
    result = build(tmp_path, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-4000:]
    assert "planted failure" in log
