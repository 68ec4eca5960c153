"""The executable book: configuration, Jupytext pairs, Colab cell, notebook execution, the build.

Fast tests check the files; tests marked ``slow`` execute notebooks (quick profile) and build
the book with ``jupyter-book`` in a temporary copy, so nothing is written into the repository.
The site itself is checked in a real browser by tests/test_browser.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from conftest import (
    IGNORE_NAMES,
    NOTEBOOK_SECONDS,
    ROOT,
    STRICT,
    TIMINGS,
    build,
    copy_book,
    executed_entries,
    front_matter,
    launch_targets,
    quick_env,
    toc_entries,
    toc_notebooks,
)
from packaging.requirements import Requirement

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import record_exec_times  # noqa: E402
import shendu_book  # noqa: E402
import shendu_vendor  # noqa: E402

REBUILD_SECONDS = 30  # DESIGN.md: an unchanged rebuild takes at most 30 s


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text("utf8"))


def _norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def first_code_cell(entry: str, part: str = "source"):
    import jupytext

    nb = jupytext.read(ROOT / f"{entry}.md")
    return next(c[part] for c in nb.cells if c.cell_type == "code")


# Pages a reader may run in Colab: every chapter, and the appendix that trains (checkpoints).
COLAB_PAGES = toc_notebooks() + ["book/checkpoints"]


# --------------------------------------------------------------------------- fast: config
def test_config_fails_the_build_on_cell_errors():
    cfg = config()
    execute = cfg["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["allow_errors"] is False, "a cell that raises must be an execution failure"
    # MyST-NB runs every notebook and keeps each failure's report; the book's extension then
    # fails the build (see test_cell_error_fails_the_build)
    assert execute["raise_on_error"] is False
    assert cfg["sphinx"]["local_extensions"] == {"shendu_book": "book/_ext"}
    assert cfg["only_build_toc_files"] is True
    assert "**.ipynb" in cfg["exclude_patterns"], "paired .ipynb would duplicate documents"
    assert cfg["bibtex_bibfiles"] == ["book/references.bib"]


def test_config_book_features():
    cfg = config()
    assert cfg["title"] and cfg["author"]
    assert (ROOT / cfg["logo"]).is_file() and (ROOT / cfg["html"]["favicon"]).is_file()
    repo = cfg["repository"]
    assert repo["url"] == "https://github.com/shendu-course/shendu" and repo["branch"] == "main"
    launch = cfg["launch_buttons"]
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert launch["thebe"] is True
    thebe = cfg["sphinx"]["config"]["thebe_config"]
    assert (thebe["repository_url"], thebe["repository_branch"]) == (repo["url"], repo["branch"])
    assert cfg["html"]["use_repository_button"] is True


def test_config_uses_vendored_scripts():
    """MathJax, require.js, the widget manager and anywidget's module come from _static/vendor,
    never a CDN."""
    sphinx = config()["sphinx"]["config"]
    assert sphinx["mathjax_path"] == shendu_vendor.MATHJAX_PATH
    # first our shim (book/_ext/static: MathJax 2's Hub for the widget manager), then vendored
    assert list(sphinx["nb_ipywidgets_js"]) == ["widgets-mathjax.js", shendu_vendor.REQUIREJS_PATH,
                                               shendu_vendor.WIDGETS_CONFIG_PATH,
                                               shendu_book.ANYWIDGET_CONFIG_PATH,
                                               shendu_vendor.WIDGETS_PATH]
    assert (ROOT / "book" / "_ext" / "static" / "widgets-mathjax.js").exists()
    for asset in shendu_vendor.ASSETS:
        name, _, version = asset.spec.rpartition("@")
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{asset.spec}: pin an exact version"
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", asset.integrity), asset.spec
    dests = {a.dest for a in shendu_vendor.ASSETS}
    for path in (shendu_vendor.MATHJAX_PATH, shendu_vendor.REQUIREJS_PATH,
                 shendu_vendor.WIDGETS_CONFIG_PATH, shendu_vendor.WIDGETS_PATH):
        assert path.split("/")[1] in dests, path


def test_vendoring_without_npm_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(shendu_vendor.VendorError, match=r"`npm` is not on PATH.*apt-get install npm"):
        shendu_vendor.ensure_vendored(tmp_path / "cache", log=lambda msg: None)


def test_vendoring_checks_integrity_and_caches(tmp_path, monkeypatch):
    """A fake `npm` serves tarballs: a wrong one is refused; a right one is unpacked once."""
    pkg = tmp_path / "pkg"
    (pkg / "package" / "dist").mkdir(parents=True)
    (pkg / "package" / "dist" / "lib.js").write_text("define('x', [], {});\n")
    (pkg / "package" / "dist" / "skip.map").write_text("{}")
    tgz = tmp_path / "demo-1.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(pkg / "package", arcname="package")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bindir / "npm"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{calls}"\n'
        'while [ "$1" != "--pack-destination" ]; do shift; done\n'
        f'cp "{tgz}" "$2/"\n'
        'echo \'[{"filename": "demo-1.0.0.tgz"}]\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")

    def asset(integrity):
        return shendu_vendor.NpmAsset("demo@1.0.0", integrity, "MIT", "demo",
                                      (("package/dist/*.js", "package/dist/"),))

    with pytest.raises(shendu_vendor.VendorError, match="integrity"):
        shendu_vendor.ensure_vendored(tmp_path / "c", [asset("sha512-" + "A" * 86 + "==")],
                                      log=lambda m: None)
    good = asset(shendu_vendor._sri(tgz))
    site = shendu_vendor.ensure_vendored(tmp_path / "c", [good], log=lambda m: None)
    assert (site / "vendor" / "demo" / "lib.js").is_file()
    assert not (site / "vendor" / "demo" / "skip.map").exists()
    n_calls = len(calls.read_text().splitlines())
    assert shendu_vendor.ensure_vendored(tmp_path / "c", [good], log=lambda m: None) == site
    assert len(calls.read_text().splitlines()) == n_calls, "a filled cache must not call npm"


def test_toc_documents_exist():
    for entry in toc_entries():
        candidates = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb", ".rst")]
        assert any(p.exists() for p in candidates), f"_toc.yml names missing {entry}"


def test_toc_has_notebooks_and_reference_pages():
    assert toc_notebooks(), "_toc.yml lists no notebook"
    assert {"book/glossary", "book/status"} <= set(toc_entries())


def test_gitignore_keeps_build_out():
    ignored = (ROOT / ".gitignore").read_text("utf8").split()
    assert "_build/" in ignored or "/_build/" in ignored


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


@pytest.mark.parametrize("entry", toc_notebooks())
def test_first_visible_cell_chooses_profile_and_device(entry):
    """The first cell a reader sees (the Colab cell is hidden) is where the profile is chosen,
    and where a notebook that trains picks the GPU when there is one."""
    import jupytext

    cells = [c for c in jupytext.read(ROOT / f"{entry}.md").cells if c.cell_type == "code"
             and "remove-cell" not in c.metadata.get("tags", [])]
    first = cells[0].source
    assert "PROFILE = shendu.set_profile(None)" in first, first
    trains = any(word in c.source for c in cells for word in (".fit(", "Trainer("))
    if trains:
        assert 'DEVICE = "cuda" if shendu.cuda_available() else "cpu"' in first, first
        assert any("DEVICE" in c.source for c in cells[1:]), f"{entry}: DEVICE is never used"


# --------------------------------------------------------------------------- fast: Colab
class _Recorder:
    """Stands in for subprocess.run in the Colab cell."""

    def __init__(self, installed: str):
        self.calls, self.installed = [], installed

    def __call__(self, cmd, **kwargs):
        import subprocess

        self.calls.append((list(cmd), kwargs))
        return subprocess.CompletedProcess(cmd, 0, stdout=self.installed, stderr="")


def _run_colab_cell(entry, monkeypatch, in_colab: bool, tmp_path: Path):
    import subprocess
    import types

    src = first_code_cell(entry)
    recorder = _Recorder("ipywidgets==7.7.1\nnumba==0.60.0\nnumba-cuda==0.4.0\nnumpy==2.0.2\n")
    monkeypatch.setattr(subprocess, "run", recorder)
    if in_colab:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    real_open = open

    def fake_open(path, *args, **kwargs):  # keep the cell's /tmp file inside tmp_path
        return real_open(tmp_path / Path(path).name, *args, **kwargs)

    exec(compile(src, f"{entry} (first cell)", "exec"), {"__name__": "__main__", "open": fake_open})
    return recorder


@pytest.mark.parametrize("entry", COLAB_PAGES)
def test_colab_cell_installs_only_in_colab(entry, monkeypatch, tmp_path):
    assert "google.colab" in first_code_cell(entry), f"{entry}: the first cell must detect Colab"
    # one cell for every page, hidden from the book (it does nothing there), kept in the .ipynb
    assert first_code_cell(entry) == first_code_cell(COLAB_PAGES[0]), f"{entry}: another cell"
    assert "remove-cell" in first_code_cell(entry, "metadata").get("tags", []), entry
    assert _run_colab_cell(entry, monkeypatch, False, tmp_path).calls == [], (
        "outside Colab the first cell must not install anything"
    )


@pytest.mark.parametrize("entry", COLAB_PAGES)
def test_colab_cell_never_upgrades_what_colab_pins(entry, monkeypatch, tmp_path):
    recorder = _run_colab_cell(entry, monkeypatch, True, tmp_path)
    (freeze, _), (install, _) = recorder.calls
    assert freeze[1:] == ["-m", "pip", "list", "--format=freeze", "--exclude", "shendu"]
    assert install[1:4] == ["-m", "pip", "install"]
    flags = set(install)
    assert not flags & {"-U", "--upgrade", "--force-reinstall", "--upgrade-strategy", "-I",
                        "--ignore-installed"}, install
    # every installed package becomes a constraint: ipywidgets 7.7.1 and numba-cuda stay
    constraints = tmp_path / Path(install[install.index("-c") + 1]).name
    assert constraints.read_text() == recorder.installed
    target = [a for a in install if "git+" in a]
    repo = config()["repository"]
    assert target == [f"shendu @ git+{repo['url']}@{repo['branch']}"], install
    assert "[cuda]" not in " ".join(install), "numba-cuda comes with Colab's GPU runtime"


# --------------------------------------------------------------------------- fast: content
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


def test_bibliography_has_the_papers_behind_the_chapters():
    bib = (ROOT / "book" / "references.bib").read_text("utf8").lower()
    for title in ("very deep convolutional networks", "going deeper with convolutions",
                  "deep residual learning", "rich feature hierarchies",
                  "fully convolutional networks", "show and tell", "a method for stochastic",
                  "delving deep into rectifiers", "dropout: a simple way",
                  "batch normalization", "mixed precision training"):
        assert title in bib, f"references.bib lacks {title!r}"
    sources = [ROOT / f"{e}.md" for e in toc_entries() if (ROOT / f"{e}.md").exists()]
    cited = set(re.findall(r"\{cite(?::\w+)?\}`([^`]+)`",
                           "".join(p.read_text("utf8") for p in sources)))
    cited = {k.strip() for group in cited for k in group.split(",")}
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.M))
    assert keys <= cited, f"entries never cited (the bibliography lists cited works): {keys - cited}"


def test_glossary_defines_the_course_terms():
    text = (ROOT / "book" / "glossary.md").read_text("utf8")
    block = text.split("```{glossary}", 1)[1].split("```", 1)[0]
    terms = {line.strip().lower() for line in block.splitlines()
             if line and not line.startswith((" ", ":"))}
    for term in ("receptive field", "stride", "padding", "channel", "feature map", "epoch",
                 "mini-batch", "dropout", "batch normalisation", "filter", "pooling"):
        assert term in terms, f"the glossary lacks {term!r}"


def glossary_terms():
    text = (ROOT / "book" / "glossary.md").read_text("utf8")
    block = text.split("```{glossary}", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines()
            if line.strip() and not line.startswith((" ", ":"))]


def prose(text):
    """The prose lines of a MyST page: not its front matter, fenced blocks (code cells,
    directives), display math or headings."""
    lines, fence, math = text.split("\n"), None, False
    start = lines.index("---", 1) + 1 if lines[0] == "---" else 0
    for line in lines[start:]:
        stripped = line.strip()
        if fence:
            fence = None if stripped.startswith(fence) and not stripped.strip("`~") else fence
        elif re.match(r"(`{3,}|~{3,})", stripped):
            fence = re.match(r"(`{3,}|~{3,})", stripped).group(1)
        elif stripped.startswith("$$"):
            math = math if stripped.endswith("$$") and len(stripped) > 2 else not math
        elif not math and not stripped.startswith("#"):
            yield line


@pytest.mark.parametrize("entry", toc_notebooks())
def test_each_chapter_links_a_glossary_term_the_first_time_it_uses_it(entry):
    """As the glossary says: the first use in the prose (a plural counts; code, math, links
    and other roles do not) is a {term} role."""
    role = re.compile(r"\{term\}`([^`<]*?)(?:\s*<([^>]+)>)?`")
    other = re.compile(r"\{\w+\}`[^`]*`|`[^`]*`|\$[^$]*\$|\[[^\]]*\]\([^)]*\)")
    lines = list(prose((ROOT / f"{entry}.md").read_text("utf8")))
    unlinked = []
    for term in glossary_terms():
        word = re.compile(r"(?<![\w-])" + re.escape(term) + r"(?:s|es)?(?![\w-])",
                          0 if term[0].isupper() else re.I)
        for line in lines:
            linked = [m.start() for m in role.finditer(line)
                      if (m.group(2) or m.group(1)).strip().lower() == term.lower()]
            plain = [m.start() for m in word.finditer(other.sub(lambda m: " " * len(m[0]), line))]
            if linked or plain:
                if not linked or (plain and min(plain) < min(linked)):
                    unlinked.append(f"{term!r} in: {line.strip()}")
                break
    assert not unlinked, "first uses without {term}:\n" + "\n".join(unlinked)


def test_execution_times_recorded_for_every_notebook():
    data = record_exec_times.load()
    assert "quick" in data, "run `python book/_ext/record_exec_times.py --profile quick`"
    for profile, run in data.items():
        assert set(run["notebooks"]) == set(toc_notebooks()), (
            f"{profile}: the record does not match _toc.yml; run {run['command']}")
        assert all(n["succeeded"] for n in run["notebooks"].values()), profile
        # the page shows the verdict against DESIGN.md's budgets; the live quick-profile
        # budget is test_notebook_executes_quick's
        assert record_exec_times.verdict(profile, run)


def test_recording_only_some_notebooks_keeps_the_others(monkeypatch):
    """--only reruns the named notebooks; the other rows keep their time and where they ran."""
    notebooks = toc_notebooks()
    ran = []
    monkeypatch.setattr(record_exec_times, "execute",
                        lambda entry, work, timeout: ran.append(entry) or (1.5, None))
    previous = {"commit": "abc", "date": "then", "machine": {"cpu_count": 2},
                "notebooks": {n: {"seconds": 9.0, "succeeded": True, "error": None}
                              for n in notebooks}}
    run = record_exec_times.record("quick", only=[notebooks[-1]], previous=previous)
    assert ran == [notebooks[-1]]
    assert run["notebooks"][notebooks[-1]]["seconds"] == 1.5
    for entry in notebooks[:-1]:
        assert run["notebooks"][entry] == {**previous["notebooks"][entry], "commit": "abc",
                                           "date": "then", "machine": {"cpu_count": 2}}
    assert run["total_seconds"] == 9.0 * (len(notebooks) - 1) + 1.5


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


# --------------------------------------------------------------------------- HTML helpers
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def html_tags(path: Path) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(path.read_text("utf8"))
    return parser.tags


def launch_links(page: Path) -> dict[str, str]:
    """{"Colab"|"Binder": repository path of the notebook it opens} on one built page."""
    return launch_targets(attrs.get("href") or "" for tag, attrs in html_tags(page) if tag == "a")


def site_pages(html: Path) -> list[Path]:
    skip = {"_static", "_sources", "_images", "reports", "_sphinx_design_static"}
    return [p for p in sorted(html.rglob("*.html"))
            if not skip & set(p.relative_to(html).parts)]


# --------------------------------------------------------------------------- slow
# What the notebooks' kernel runs, in the wheel's environment: a reader's notebook, opened
# outside any checkout. The timeout only stops a hung cell: the 60 s budget is measured on a quiet
# machine by book/_ext/record_exec_times.py and shown on the Status page, not by a timed test.
_EXECUTE = f"""
import sys, jupytext, nbclient
nb = jupytext.read(sys.argv[1])
nbclient.NotebookClient(nb, timeout={NOTEBOOK_SECONDS}, kernel_name="python3",
                        resources={{"metadata": {{"path": sys.argv[2]}}}}).execute()
print(sum(bool(c.get("outputs")) for c in nb.cells if c.cell_type == "code"))
"""


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory):
    """A fresh virtual environment with shendu installed from a wheel built from this checkout
    (and a kernel to run notebooks), as after `pip install shendu`: no checkout on its path."""
    import subprocess
    import venv

    where = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(ROOT, where / "source", ignore=shutil.ignore_patterns(
        ".git", ".venv", "_build", "build", "runs", "__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", where / "dist", source], check=True,
                   timeout=600)
    wheel, = (where / "dist").glob("shendu-*.whl")
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "-q", "install", wheel, "ipykernel", "nbclient",
                    "jupytext"], check=True, timeout=900)
    return python


@pytest.mark.slow
@pytest.mark.parametrize("entry", toc_notebooks())
def test_notebook_runs_from_the_wheel(entry, wheel_python, tmp_path):
    """Each notebook runs top to bottom in the quick profile, in a copy of notebooks/ without
    its results folder, with shendu from the wheel: what a reader in Colab or after `pip install
    shendu` runs (the committed results come from the package)."""
    import subprocess

    work = shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks",
                           ignore=shutil.ignore_patterns("results", *IGNORE_NAMES))
    env = quick_env(MPLBACKEND="Agg", PATH=f"{wheel_python.parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([wheel_python, "-c", _EXECUTE, work / f"{Path(entry).name}.md", work],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300 + NOTEBOOK_SECONDS)
    assert result.returncode == 0, result.stderr[-6000:]
    assert int(result.stdout.split()[-1]) > 0, "no code cell had an output"
    shendu_file = subprocess.run([wheel_python, "-c", "import shendu; print(shendu.__file__)"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    assert "site-packages" in shendu_file and str(ROOT) not in shendu_file, shendu_file


@pytest.mark.slow
def test_binder_post_build_fills_the_caches(tmp_path):
    """postBuild, which Binder runs once per image, loads both datasets and leaves Numba's
    compiled kernels in the cache (here a folder of their own, to see them written)."""
    import subprocess

    assert os.access(ROOT / "postBuild", os.X_OK), "repo2docker runs postBuild as a program"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), SHENDU_PROFILE="full",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([ROOT / "postBuild"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    cached = {p.name.split(".")[0] for p in (tmp_path / "numba").rglob("*.nbi")}  # module.fn-line
    for kernel in ("conv", "pool", "norm", "sample"):  # DeepConvNet, BatchNorm, augmentation
        assert kernel in cached, f"no compiled {kernel} kernel cached: {sorted(cached)}"


@pytest.mark.slow
def test_book_builds_quick(built_book):
    """The real book builds, strictly (any warning fails), with executed outputs."""
    assert built_book.returncode == 0, built_book.tail()
    html_dir = built_book.html
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
    # the chapter map: every section of the book's chapter, every chapter with its two times
    chapters = next(t for t in intro.split("<table")[1:] if "you will learn" in t)
    chapters = chapters.split("</table>", 1)[0]
    for section in ("8.1", "8.2", "8.3", "8.4", "8.5"):
        assert re.search(rf">\s*{section} ", chapters), section
    for entry in toc_notebooks():
        title = next(line[2:] for line in (ROOT / f"{entry}.md").read_text("utf8").splitlines()
                     if line.startswith("# "))
        row = chapters.split(title, 1)[1].split("</tr>", 1)[0]
        assert len(re.findall(r">\s*\d+ s\s*<", row)) == 2, f"{entry}: its times in both profiles"
    for entry in COLAB_PAGES:  # the Colab cell is in the .ipynb only, not on the page
        assert "google.colab" not in (html_dir / f"{entry}.html").read_text("utf8"), entry


@pytest.mark.slow
def test_site_is_self_contained(built_book):
    """No page loads a script, style sheet, image or font from another host."""
    assert built_book.returncode == 0, built_book.tail()
    html = built_book.html
    for rel in (shendu_vendor.MATHJAX_PATH, shendu_vendor.REQUIREJS_PATH,
                shendu_vendor.WIDGETS_CONFIG_PATH, shendu_vendor.WIDGETS_PATH,
                "vendor/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"):
        assert (html / "_static" / rel).is_file(), f"_static/{rel} was not vendored"
    remote = re.compile(r"^(https?:)?//")
    for page in site_pages(html):
        for tag, attrs in html_tags(page):
            url = attrs.get("src") if tag in ("script", "img", "iframe") else (
                attrs.get("href") if tag == "link" and attrs.get("rel") != "canonical" else None)
            assert not (url and remote.match(url)), f"{page.relative_to(html)}: <{tag}> loads {url}"


@pytest.mark.slow
def test_launch_links_open_notebooks_in_the_repository(built_book):
    assert built_book.returncode == 0, built_book.tail()
    for entry in toc_entries():
        links = launch_links(built_book.html / f"{entry}.html")
        page = (built_book.html / f"{entry}.html").read_text("utf8")
        if entry in toc_notebooks():
            assert set(links) == {"Colab", "Binder"}, f"{entry}: launch links {links}"
            for where, path in links.items():
                assert path == f"{entry}.ipynb", (entry, where, path)
                assert (ROOT / path).is_file(), f"{where} would open {path}, not in the repository"
            # Live Code: Thebe on a Binder kernel of the same repository and branch
            assert "initThebeSBT()" in page, f"{entry}: no Live Code button"
            thebe = page.split('<script type="text/x-thebe-config">', 1)[1].split("</script>", 1)[0]
            assert 'repo: "shendu-course/shendu"' in thebe and 'ref: "main"' in thebe, thebe
        else:
            assert not links, f"{entry} has no paired notebook, but launch links {links}"
            assert "initThebeSBT()" not in page, f"{entry}: Live Code without a notebook"


@pytest.mark.slow
def test_reference_pages_are_built_at_build_time(built_book):
    assert built_book.returncode == 0, built_book.tail()
    html = built_book.html
    glossary = (html / "book" / "glossary.html").read_text("utf8")
    assert 'id="term-receptive-field"' in glossary
    assert re.search(r'<figure[^>]*id="fig-receptive-field"', glossary), "figure not named"
    assert re.search(r'<span class="caption-number">Figure \d+ </span>', glossary), "unnumbered"
    assert "<img " in glossary.split('id="fig-receptive-field"', 1)[1].split("</figure>", 1)[0]
    status = (html / "book" / "status.html").read_text("utf8")
    for entry in executed_entries():
        assert entry in status, f"the Status page's execution table lacks {entry}"
    assert "<code class=\"docutils literal notranslate\"><span class=\"pre\">quick</span></code>" in status
    for name in ("Python", "NumPy", "Numba"):
        assert f"<td><p>{name}</p></td>" in status, f"the Status page lacks the {name} version"


@pytest.mark.slow
def test_unchanged_rebuild_is_fast(built_book):
    """A second build with nothing changed executes nothing and takes seconds."""
    assert built_book.returncode == 0, built_book.tail()
    again = build(built_book.book, *STRICT, timeout=300)
    TIMINGS["book rebuild, nothing changed"] = again.seconds
    assert again.returncode == 0, again.tail()
    assert "Executing notebook" not in again.log, "an unchanged notebook was executed again"
    assert again.seconds < REBUILD_SECONDS, f"unchanged rebuild took {again.seconds:.1f} s"


def _broken_notebook_book(tmp_path: Path) -> Path:
    """A copy of the book whose only chapter raises in its second cell."""
    book = copy_book(tmp_path)
    shutil.rmtree(book / "notebooks")
    (book / "notebooks").mkdir()
    header = (ROOT / f"{toc_notebooks()[0]}.md").read_text("utf8").split("\n---\n", 1)[0]
    (book / "notebooks" / "broken.md").write_text(
        header + "\n---\n\n# Broken\n\n"
        "```{code-cell} ipython3\nprint('fine so far')\n```\n\n"
        "```{code-cell} ipython3\nraise RuntimeError('planted failure')\n```\n",
        "utf8",
    )
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/broken\n"
        "  - file: book/glossary\n  - file: book/status\n", "utf8"
    )
    return book


@pytest.mark.slow
def test_cell_error_fails_the_build(tmp_path):
    """A cell that raises fails `jupyter-book build .` (no flags), its traceback is kept in
    _build/html/reports/, and an unchanged rebuild still fails."""
    book = _broken_notebook_book(tmp_path)
    result = build(book, timeout=300)
    assert result.returncode != 0, result.tail(4000)
    assert "planted failure" in result.log
    report = book / "_build" / "html" / "reports" / "notebooks" / "broken.err.log"
    assert report.is_file(), "the failing notebook's execution report was not kept"
    assert "planted failure" in report.read_text("utf8")
    assert "notebook notebooks/broken failed to execute" in result.log
    again = build(book, timeout=300)
    assert again.returncode != 0, "an unchanged rebuild hid the failing notebook"
    assert "notebook notebooks/broken failed to execute" in again.log


@pytest.mark.slow
def test_strict_build_catches_broken_image_and_link(tmp_path):
    book = copy_book(tmp_path)
    (book / "book" / "planted.md").write_text(
        "# Planted\n\n![a figure that is not there](images/planted-missing.png)\n\n"
        "See [a page that is not there](planted-missing-page.md).\n", "utf8")
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/planted\n", "utf8")
    result = build(book, *STRICT, timeout=300)
    assert result.returncode != 0, result.tail(4000)
    assert "planted-missing.png" in result.log, result.tail(4000)
    assert "planted-missing-page" in result.log, result.tail(4000)


def test_front_matter_helpers():
    assert "kernelspec" in front_matter(ROOT / "book" / "status.md")
    assert set(executed_entries()) >= set(toc_notebooks()) | {"book/status", "book/glossary"}
    assert json.loads(json.dumps(toc_entries()))  # plain strings
