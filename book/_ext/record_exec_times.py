"""Record how long each chapter notebook takes to execute, per profile, for the Status page.

    python book/_ext/record_exec_times.py --profile quick     # about a minute per notebook
    python book/_ext/record_exec_times.py --profile full      # the real experiments: long
    python book/_ext/record_exec_times.py --profile full --only notebooks/02_why_deeper

Executes every notebook of ``_toc.yml`` (``notebooks/...``) top to bottom in a temporary copy of
``notebooks/`` with ``SHENDU_PROFILE`` set, as the book build does, and writes
``book/_data/execution_times.json``: per profile, each notebook's wall time and result, the
command, commit, machine and date. The other profile's record is kept. With ``--only``, only
the named notebooks run and their rows are replaced; each row keeps the commit and date it was
recorded at, so a notebook that did not change need not be run again. The Status page
(``book/status.md``) shows both profiles side by side with DESIGN.md's budgets; the current
build's own times are in the same page's execution table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "book" / "_data" / "execution_times.json"
PROFILES = ("quick", "full")
# DESIGN.md's budgets on 2 CPU cores
BUDGETS = {
    "quick": {"per_notebook_s": 60, "text": "each notebook ≤ 60 s"},
    "full": {"book_s": 45 * 60, "text": "the whole book ≤ 45 min"},
}


def toc_entries(toc: dict | None = None, root: Path = ROOT) -> list[str]:
    """All document paths named in _toc.yml (root first), without extension."""
    import yaml

    toc = toc if toc is not None else yaml.safe_load((root / "_toc.yml").read_text("utf8"))
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


def toc_notebooks(root: Path = ROOT) -> list[str]:
    """The chapters: Jupytext-paired notebooks under notebooks/."""
    return [e for e in toc_entries(root=root) if e.startswith("notebooks/")]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict:
    import numba
    import numpy

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
    }


def execute(entry: str, work: Path, timeout: float) -> tuple[float, str | None]:
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(work / f"{Path(entry).name}.md")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    try:
        client.execute()
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded, and the exit status says so
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return time.perf_counter() - start, error


def record(profile: str, timeout: float = 3600, only=None, previous=None) -> dict:
    os.environ["SHENDU_PROFILE"] = profile  # inherited by the kernels
    os.environ.pop("MPLBACKEND", None)
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "notebooks", "src"))
    commit += " (with uncommitted changes)" if dirty and commit else ""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kept = {}
    if only and previous:  # rows recorded before rows had their own commit take their run's
        kept = {entry: {"commit": previous["commit"], "date": previous["date"],
                        "machine": previous["machine"], **row}
                for entry, row in previous["notebooks"].items()}
    notebooks = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "notebooks"
        shutil.copytree(ROOT / "notebooks", work,
                        ignore=shutil.ignore_patterns("runs", "_build", ".ipynb_checkpoints"))
        for entry in toc_notebooks():
            if only and entry not in only and entry in kept:
                notebooks[entry] = kept[entry]
                continue
            seconds, error = execute(entry, work, timeout)
            notebooks[entry] = {"seconds": round(seconds, 1), "succeeded": error is None,
                                "error": error, "commit": commit, "date": date,
                                "machine": machine()}
            print(f"{entry}: {seconds:.1f} s{'' if error is None else ' FAILED ' + error}")
    return {
        "command": f"python book/_ext/record_exec_times.py --profile {profile}",
        "commit": commit,
        "date": date,
        "machine": machine(),
        "notebooks": notebooks,
        "total_seconds": round(sum(n["seconds"] for n in notebooks.values()), 1),
    }


def load(path: Path = RECORD) -> dict:
    return json.loads(path.read_text("utf8")) if path.exists() else {}


def verdict(profile: str, run: dict) -> str:
    """Whether a recorded run is within DESIGN.md's budget for its profile."""
    if not all(n["succeeded"] for n in run["notebooks"].values()):
        return "❌ a notebook failed"
    if profile == "quick":
        ok = all(n["seconds"] <= BUDGETS["quick"]["per_notebook_s"] for n in run["notebooks"].values())
    else:
        ok = run["total_seconds"] <= BUDGETS["full"]["book_s"]
    return ("✅ within budget" if ok else "⚠️ over budget") + f" ({BUDGETS[profile]['text']})"


def markdown(data: dict, notebooks: list[str]) -> str:
    """The Status page's table: one row per notebook, one column per profile."""
    def cell(profile, entry):
        run = data.get(profile)
        if not run:
            return "not recorded"
        item = run["notebooks"].get(entry)
        if item is None:
            return "not recorded"
        return f"{item['seconds']:.1f} s" + ("" if item["succeeded"] else " ❌")

    def fmt_total(profile):
        run = data.get(profile)
        return f"**{run['total_seconds']:.1f} s**" if run else "—"

    lines = ["| notebook | " + " | ".join(f"`{p}` profile" for p in PROFILES) + " |",
             "|---|" + "---:|" * len(PROFILES)]
    for entry in notebooks:
        lines.append(f"| `{entry}` | " + " | ".join(cell(p, e) for p, e in ((p, entry) for p in PROFILES)) + " |")
    lines.append("| whole book | " + " | ".join(fmt_total(p) for p in PROFILES) + " |")
    lines.append("")
    for profile in PROFILES:
        run = data.get(profile)
        if run:
            m = run["machine"]
            lines.append(
                f"- `{profile}`: {verdict(profile, run)}; last recorded {run['date']} at commit "
                f"`{run['commit'][:12] or 'unknown'}` (each notebook at its own commit, in "
                f"`book/_data/execution_times.json`) on {m['platform']}, {m['cpu_count']} CPU cores, "
                f"Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}, by `{run['command']}`."
            )
        else:
            lines.append(f"- `{profile}`: not recorded yet; run "
                         f"`python book/_ext/record_exec_times.py --profile {profile}`.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
    parser.add_argument("--only", action="append", metavar="NOTEBOOK",
                        help="run only this notebook (repeatable); keep the others' rows")
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(toc_notebooks())
    if unknown:
        parser.error(f"not a notebook of _toc.yml: {', '.join(sorted(unknown))}")
    data = load()
    data[args.profile] = run = record(args.profile, args.timeout, args.only, data.get(args.profile))
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf8")
    print(f"wrote {RECORD.relative_to(ROOT)}: {verdict(args.profile, run)}")
    return 0 if all(n["succeeded"] for n in run["notebooks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
