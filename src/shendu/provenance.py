"""Where a recorded figure came from: the machine that made it, the commit of the code, and the
checkout of the course it was made in (where experiments write their results and the README)."""
import os
import platform
import subprocess
from pathlib import Path

from .errors import ShenduError


def machine():
    """What ran it: the CPU model, the cores this process may use, the memory."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
              if hasattr(os, "sysconf") else None)
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
    return {"cpu": cpu, "cores": cores, "memory_gib": round(memory, 1) if memory else None,
            "system": platform.platform()}


def checkout(start=None):
    """The checkout of the course that holds `start` (default: the current folder): the nearest
    folder at or above it with pyproject.toml and notebooks/results."""
    here = Path.cwd() if start is None else Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks" / "results").is_dir():
            return folder
    raise ShenduError(f"{here} is not inside a checkout of the course (no pyproject.toml and "
                      "notebooks/results above it): run this from one, or say where to write")


def commit(repo, unless_changed_in=None):
    """HEAD's short hash in the git repository `repo`, with "-dirty" if a tracked file differs
    from it, except under `unless_changed_in` (a results folder: what experiments write, so one
    experiment's results must not mark the code of the next as changed). None outside git."""
    def git(*args):
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    excepted = []
    if unless_changed_in is not None:
        try:
            excepted = [f":!{Path(unless_changed_in).resolve().relative_to(Path(repo).resolve())}"]
        except ValueError:  # the results go elsewhere: every tracked file counts
            pass
    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *excepted)
    except (OSError, subprocess.SubprocessError):
        return None
    return None if head is None else head + ("-dirty" if changed else "")
