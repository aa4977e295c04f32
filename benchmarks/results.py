"""Shared by the benchmark scripts: machine description and one section per benchmark in RESULTS.md."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from evaluators.latency.base import cpu_name

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parents[1]
ARCHIVE = re.compile(r"^## Archive$", re.M)  # superseded runs, one line each: the file's last section


def machine() -> str:
    """CPU (as the latency backends name it), core count, GPU where torch sees one, OS and Python, as one line."""
    gpu = f", GPU: {torch.cuda.get_device_name()} (torch {torch.__version__})" if torch.cuda.is_available() else ""
    return (f"{cpu_name()}, {os.cpu_count()} cores{gpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def command_line() -> str:
    """The command that is running, as a user would type it from the repository root: `python -m PACKAGE ...` for
    a package's __main__.py, else `python SCRIPT ...`."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py":
        words = ["-m", ".".join(script.resolve().parent.relative_to(ROOT).parts)]
    else:
        words = [os.path.relpath(script)]
    return "python " + " ".join(shlex.quote(a) for a in [*words, *sys.argv[1:]])


def shown(path: Path) -> str:
    """A path as the captions show it: relative to the repository root, however it was given."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def variant_name(recipe: Path, overrides: list[str]) -> str:
    """A recipe's name plus the overrides it ran with, as a file-name-safe slug (run names, plots, section keys)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", " ".join([Path(recipe).stem, *overrides])).strip("-")


def run_name(recipe: Path, overrides: list[str], limit: int = 80) -> str:
    """`variant_name`, or the recipe's name plus a hash of the overrides where that is longer than `limit`
    (study names are capped); stable across runs, so `--runs` folders are found again."""
    name = variant_name(recipe, overrides)
    if len(name) <= limit:
        return name
    return f"{Path(recipe).stem}-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:10]}"


def budget_tag(trials: int, default: int) -> list[str]:
    """Nothing for a script's default trial budget, else `["N-trials"]`, so another budget gets its own section."""
    return [] if trials == default else [f"{trials}-trials"]


def markdown_table(rows: list[dict[str, object]]) -> str:
    """A GitHub markdown table from a list of same-keyed dicts."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def write_section(
    key: str, title: str, body: str, command: str | None = None, *, machine_name: str | None = None,
    date: str | None = None, path: Path = RESULTS,
) -> Path:
    """Replace the section `key` of RESULTS.md (or `path`) with `body` in place, or add it as a new section just
    before the closing "## Archive" (at the end where there is none); stamped with command (default: this
    process's), machine and date (default: this machine, now; a run measured elsewhere passes its own)."""
    stamp = (
        f"Command: `{command or command_line()}`  \n"
        f"Machine: {machine_name or machine()}  \n"
        f"Date: {date or dt.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
    )
    block = f"<!-- {key}:start -->\n## {title}\n\n{stamp}\n{body.strip()}\n<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script named in its command line.\n"
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif archive := ARCHIVE.search(text):
        text = text[:archive.start()].rstrip() + "\n\n" + block + "\n\n" + text[archive.start():]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def plot_fronts(path: Path, title: str, fronts: dict[str, list[np.ndarray]]) -> Path:
    """Step plots of Pareto fronts ((accuracy, latency) rows), one colour per label and a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, (label, runs) in zip(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:gray"), fronts.items()):
        for i, points in enumerate(runs):
            points = points[np.argsort(points[:, 1])]
            ax.step(points[:, 1], points[:, 0], where="post", color=colour, alpha=0.8, label=label if i == 0 else None)
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
