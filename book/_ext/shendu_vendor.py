"""Vendor the browser assets the book needs, so the built site works with no network.

The built book loads three third-party scripts: MathJax 3 (math), require.js and the Jupyter
widget manager (`@jupyter-widgets/html-manager`, which renders the notebooks' widget outputs).
By default Sphinx and MyST-NB load them from CDNs; this module fetches pinned versions from the
npm registry once (``npm pack``), checks each tarball against its pinned SHA-512 integrity,
extracts only the files the site needs into a cache folder and returns that folder, which
``shendu_book`` adds to ``html_static_path``. Sphinx then copies it into ``_build/html/_static/``.

Cache: ``$SHENDU_VENDOR_CACHE``, else ``$XDG_CACHE_HOME/shendu/vendor``, else
``~/.cache/shendu/vendor``. The folder is named after a hash of the pins below, so changing a
pin fetches again; an existing complete folder is reused without calling npm (fast rebuilds, and
offline rebuilds once the cache is filled).

Run it by hand to fill the cache ahead of time (CI does, before the tests)::

    python book/_ext/shendu_vendor.py
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


class VendorError(RuntimeError):
    """The assets are neither cached nor obtainable (npm missing, offline, bad tarball)."""


@dataclass(frozen=True)
class NpmAsset:
    spec: str  # name@version, exactly as `npm pack` takes it
    integrity: str  # the registry's dist.integrity (sha512-BASE64)
    license: str
    dest: str  # folder under vendor/
    # (glob on the tarball member path, prefix of that path to strip)
    files: tuple[tuple[str, str], ...]


ASSETS = (
    NpmAsset(
        spec="mathjax@3.2.2",
        integrity="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        license="Apache-2.0",
        dest="mathjax",
        files=(
            ("package/LICENSE", "package/"),
            ("package/es5/tex-chtml.js", "package/es5/"),
            # everything tex-chtml.js may load on demand: TeX extensions (\require, autoload),
            # the CommonHTML fonts, the menu and the accessibility tools it offers
            ("package/es5/input/tex/extensions/*", "package/es5/"),
            ("package/es5/output/chtml/fonts/woff-v2/*", "package/es5/"),
            ("package/es5/ui/*", "package/es5/"),
            ("package/es5/a11y/*", "package/es5/"),
            ("package/es5/sre/*", "package/es5/"),
        ),
    ),
    NpmAsset(
        spec="requirejs@2.3.8",
        integrity="sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        license="MIT",
        dest="requirejs",
        files=(("package/require.js", "package/"),),
    ),
    NpmAsset(
        # 1.x renders widget state of ipywidgets 8 and 7 (it bundles both controls versions)
        spec="@jupyter-widgets/html-manager@1.0.15",
        integrity="sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        license="BSD-3-Clause",
        dest="html-manager",
        files=(
            ("package/dist/embed-amd.js", "package/dist/"),
            # fonts the bundle's CSS refers to, beside the script (webpack publicPath)
            *((f"package/dist/*.{ext}", "package/dist/") for ext in ("woff2", "woff", "ttf", "eot", "svg")),
        ),
    ),
)

# Paths below _static/ that the site configuration (_config.yml) refers to.
MATHJAX_PATH = "vendor/mathjax/tex-chtml.js"
REQUIREJS_PATH = "vendor/requirejs/require.js"
WIDGETS_CONFIG_PATH = "vendor/html-manager/require-paths.js"
WIDGETS_PATH = "vendor/html-manager/embed-amd.js"

# Our own small files, written beside the vendored ones (folder below vendor/, content).
EXTRA_FILES = {
    # The widget bundle finds its fonts beside the URL that require.js gives its module; with no
    # path configured, require.js puts that module under the page's folder (a 404 for every
    # font). Loaded between require.js and embed-amd.js.
    WIDGETS_CONFIG_PATH.removeprefix("vendor/"): (
        "// written by book/_ext/shendu_vendor.py: the widget manager's modules (and its fonts)\n"
        "// live beside this file\n"
        "require.config({paths: {\"@jupyter-widgets/html-manager/dist\":\n"
        "  new URL(\".\", document.currentScript.src).href.replace(/\\/$/, \"\")}});\n"
    ),
}


def cache_root() -> Path:
    if os.environ.get("SHENDU_VENDOR_CACHE"):
        return Path(os.environ["SHENDU_VENDOR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shendu" / "vendor"


def _key(assets) -> str:
    blob = json.dumps([[(a.spec, a.integrity, a.dest, a.files) for a in assets], EXTRA_FILES],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sri(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError(
            "the book vendors MathJax, require.js and the Jupyter widget manager from the npm "
            "registry, and `npm` is not on PATH. Install it (Debian/Ubuntu: "
            "`apt-get install npm`; elsewhere: Node.js from https://nodejs.org), or set "
            "SHENDU_VENDOR_CACHE to a folder already filled by `python book/_ext/shendu_vendor.py`."
        )
    return npm


def _pack(npm: str, asset: NpmAsset, into: Path) -> Path:
    cmd = [npm, "pack", asset.spec, "--pack-destination", str(into), "--json", "--prefer-offline",
           "--ignore-scripts", "--loglevel=error"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise VendorError(f"`npm pack {asset.spec}` timed out after {exc.timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise VendorError(f"`npm pack {asset.spec}` failed (exit {proc.returncode}): {tail}")
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise VendorError(f"`npm pack {asset.spec}` printed no tarball name: {proc.stdout[-500:]}") from exc
    tarball = into / Path(filename).name
    if not tarball.exists():
        raise VendorError(f"`npm pack {asset.spec}` left no {tarball.name} in {into}")
    got = _sri(tarball)
    if got != asset.integrity:
        raise VendorError(f"{asset.spec}: tarball integrity {got} != pinned {asset.integrity}")
    return tarball


def _extract(asset: NpmAsset, tarball: Path, site: Path) -> int:
    out, matched, count = site / "vendor" / asset.dest, set(), 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for pattern, strip in asset.files:
                # fnmatch's * crosses "/", so "dir/*" takes the whole subtree
                if fnmatch.fnmatchcase(member.name, pattern) and member.name.startswith(strip):
                    rel = Path(member.name[len(strip):])
                    if rel.is_absolute() or ".." in rel.parts:
                        raise VendorError(f"{asset.spec}: unsafe path in tarball: {member.name}")
                    target = out / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    matched.add(pattern)
                    count += 1
                    break
    missing = [pattern for pattern, _ in asset.files if pattern not in matched]
    if missing:
        raise VendorError(f"{asset.spec}: no file in the tarball matches {missing}")
    return count


def ensure_vendored(root: Path | None = None, assets=ASSETS, log=print) -> Path:
    """The folder to add to ``html_static_path`` (it holds ``vendor/...``), filled if needed."""
    root = Path(root) if root is not None else cache_root()
    site = root / f"site-{_key(assets)}"
    if (site / ".complete").exists():
        return site
    npm = _npm()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{site.name}.tmp-", dir=root))
    try:
        tarballs = work / "tarballs"
        tarballs.mkdir()
        staged = work / "site"
        manifest = []
        for asset in assets:
            log(f"shendu_vendor: fetching {asset.spec} from the npm registry")
            tarball = _pack(npm, asset, tarballs)
            count = _extract(asset, tarball, staged)
            manifest.append({"package": asset.spec, "license": asset.license,
                             "integrity": asset.integrity, "folder": f"vendor/{asset.dest}",
                             "files": count})
        dests = {a.dest for a in assets}
        for rel, content in EXTRA_FILES.items():
            if rel.split("/")[0] in dests:
                (staged / "vendor" / rel).write_text(content, "utf8")
        (staged / "vendor" / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (staged / ".complete").write_text("ok\n")
        try:
            staged.rename(site)  # atomic: a concurrent build sees all or nothing
        except OSError:
            if not (site / ".complete").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return site


if __name__ == "__main__":
    try:
        print(ensure_vendored())
    except VendorError as exc:
        sys.exit(f"error: {exc}")
