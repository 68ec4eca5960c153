"""shendu's Sphinx extension for the book (``_config.yml``: ``sphinx.local_extensions``).

1. **Offline site.** MathJax, require.js and the Jupyter widget manager are vendored into
   ``_static/vendor/`` (see ``shendu_vendor``), and so is anywidget's module for the widget
   manager (the explorers are anywidgets), copied from the installed ``anywidget`` package with
   a require.js path to it; ``_config.yml`` points ``mathjax_path`` and ``nb_ipywidgets_js`` at
   them, so no page loads anything from the network.
2. **One execution cache per profile.** Jupyter-cache keys a notebook on its code only, so a
   ``quick`` build would otherwise hand its outputs to the next ``full`` build (and the reverse).
   The cache lives in ``_build/.jupyter_cache/<profile>``, and the profile is a Sphinx config
   value that re-reads every page when it changes.
3. **A notebook that fails fails the build, and its report is kept.** ``_config.yml`` lets
   MyST-NB carry on after a failing cell (``raise_on_error: false``), so every notebook is run
   and each failure's traceback is written to ``_build/html/reports/<page>.err.log``; at the
   end this extension logs every failed notebook and sets a non-zero exit status, with or
   without ``-W``. The failure is kept in the environment, so an unchanged rebuild fails too.
4. **Launch menus only where a notebook can be opened**: pages without a paired ``.ipynb`` in
   the repository get no Colab/Binder/Live Code menu (the links would be dead).
5. **One copy of each script**: identical <script> entries are dropped (sphinx-thebe adds
   its settings twice, which throws in the browser).
6. **Page dependencies.** ``shendu_page_dependencies`` maps a page to data files it reads while
   executing (the Status page reads the recorded execution times): a changed file re-reads and,
   in MyST-NB's ``force`` mode, re-executes that page.
"""
from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError, ExtensionError
from sphinx.util import logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shendu_vendor  # noqa: E402

logger = logging.getLogger(__name__)
PROFILES = ("full", "quick")


def current_profile() -> str:
    value = os.environ.get("SHENDU_PROFILE", "").strip().lower() or "full"
    if value not in PROFILES:
        raise ConfigError(f"SHENDU_PROFILE must be one of {PROFILES}, got {value!r}")
    return value


def _per_profile_cache(app: Sphinx, config: Config) -> None:
    config.shendu_profile = current_profile()
    base = config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache"
    config.nb_execution_cache_path = str(Path(base) / config.shendu_profile)


def _vendor_assets(app: Sphinx) -> None:
    if app.builder is None or app.builder.format != "html":
        return
    try:
        site = shendu_vendor.ensure_vendored(log=logger.info)
    except shendu_vendor.VendorError as exc:
        raise ExtensionError(f"shendu_book: cannot vendor the site's scripts: {exc}") from exc
    app.config.html_static_path.append(str(site))
    app.config.html_static_path.append(str(_anywidget_module(Path(app.outdir).parent)))
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))  # our own scripts


# The widget manager loads a widget's module through require.js, by its name; unknown names it
# fetches from a CDN. anywidget's classic-notebook bundle is such an AMD module, and it matches
# the anywidget that wrote the widget state because it comes from the same installed package.
ANYWIDGET_PATH = "vendor/anywidget/index.js"
ANYWIDGET_CONFIG_PATH = "vendor/anywidget/require-paths.js"


def _anywidget_module(build: Path) -> Path:
    """A folder for ``html_static_path`` holding anywidget's module and its require.js path."""
    folder = build / ".anywidget"
    target = folder / ANYWIDGET_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    with importlib.resources.as_file(importlib.resources.files("anywidget") / "nbextension"
                                     / "index.js") as source:
        shutil.copyfile(source, target)
    (folder / ANYWIDGET_CONFIG_PATH).write_text(
        "// written by book/_ext/shendu_book.py: anywidget's module lives beside this file\n"
        "require.config({paths: {anywidget:\n"
        "  new URL(\"index\", document.currentScript.src).href}});\n", "utf8")
    return folder


def _note_page_dependencies(app: Sphinx, docname: str, source: list[str]) -> None:
    for dep in app.config.shendu_page_dependencies.get(docname, ()):
        if not (Path(app.srcdir) / dep).exists():
            logger.warning(f"{docname}: declared dependency {dep} does not exist",
                           location=docname)
        app.env.note_dependency(str(Path(app.srcdir) / dep))


def _launch_only_paired_notebooks(app: Sphinx, pagename, templatename, context, doctree) -> None:
    """Colab, Binder and Thebe open a page's paired .ipynb; a page without one (an executed
    page of book/, such as the Status page) gets no launch menu rather than a dead link."""
    buttons = context.get("header_buttons")
    if not buttons or pagename not in app.env.all_docs:
        return
    if Path(app.env.doc2path(pagename)).with_suffix(".ipynb").exists():
        return
    context["header_buttons"] = [b for b in buttons if b.get("label") != "launch-buttons"]
    context["use_thebe"] = False


def _dedupe_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    """Drop repeated identical <script> entries. sphinx-thebe registers its inline settings
    (``const THEBE_JS_URL = ...``) twice, and the second copy throws a SyntaxError in every
    page ("Identifier 'THEBE_JS_URL' has already been declared")."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        # the two copies differ only in filename None vs "" (an inline script)
        key = (str(getattr(js, "filename", js) or ""), getattr(js, "priority", 0),
               tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def failed_notebooks(env) -> dict[str, str]:
    """docname -> error name, for every notebook whose last execution failed."""
    failed = {}
    for docname, meta in sorted(getattr(env, "nb_metadata", {}).items()):
        data = meta.get("exec_data") or {}
        if data and not data.get("succeeded", True):
            failed[docname] = data.get("error") or "error"
    return failed


def _fail_on_notebook_errors(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.env is None:
        return
    failed = failed_notebooks(app.env)
    if not failed:
        return
    app.statuscode = 1
    reports = Path(app.outdir) / "reports"
    for docname, error in failed.items():
        report = reports.joinpath(*f"{docname}.err.log".split("/"))
        where = f"traceback in {report}" if report.exists() else "see the build log"
        # an error is never silenced: the exit status is non-zero even without -W
        logger.error(f"notebook {docname} failed to execute ({error}); {where}")


def setup(app: Sphinx) -> dict:
    app.add_config_value("shendu_profile", "full", "env", [str])
    app.add_config_value("shendu_page_dependencies", {}, "env", [dict])
    # after MyST-NB's own config-inited handlers, before it reads nb_execution_cache_path
    app.connect("config-inited", _per_profile_cache, priority=900)
    app.connect("builder-inited", _vendor_assets)
    app.connect("source-read", _note_page_dependencies)
    # after sphinx-book-theme has added its launch buttons (priority 501)
    app.connect("html-page-context", _launch_only_paired_notebooks, priority=502)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("build-finished", _fail_on_notebook_errors)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
