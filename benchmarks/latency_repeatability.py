"""How repeatable is a latency measurement?

Samples candidates of a recipe and times each one twice with `slimsearch latency --json`, in two separate
processes run back to back (fresh engine sessions, fresh warm-up; back to back so that a change in the
load of a shared machine falls between candidates rather than between the two measurements of one).
For each candidate: the difference between the two medians, in percent of their mean; across candidates:
the Spearman rank correlation of the first and second measurements, i.e. whether the search would order
the candidates the same way twice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import markdown_table, shown, write_section  # noqa: E402
from evaluators.latency.table import spearman  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(recipe: Path, backend: str, seed: int, max_seconds: float, overrides: list[str]) -> dict:
    """One `slimsearch latency` process timing the candidate sampled with `seed`; its JSON row."""
    cmd = [sys.executable, "-m", "search.cli", "latency", str(recipe), "--backend", backend, "--seed", str(seed),
           "--max-seconds", str(max_seconds), "--json"]
    for item in overrides:
        cmd += ["--set", item]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]


def load_note() -> str:
    """The machine's load when the benchmark ended: other processes disturb latency measurements."""
    load = os.getloadavg()
    return (f"Load average (1, 5, 15 min) at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} on "
            f"{os.cpu_count()} cores; above the core count, other processes were competing with the timed runs.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--backends", default="onnxruntime,torch", help="comma-separated backends to test")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=2.0, help="time cap per candidate and process")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="6 candidates, 0.5 s each (a few minutes)")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.max_seconds = 6, 0.5
    rows = []
    for backend in args.backends.split(","):
        first, second = [], []
        for seed in range(args.candidates):
            first.append(measure(args.recipe, backend, seed, args.max_seconds, args.overrides))
            second.append(measure(args.recipe, backend, seed, args.max_seconds, args.overrides))
        a = [r["median_ms"] for r in first]
        b = [r["median_ms"] for r in second]
        diff = [abs(x - y) / ((x + y) / 2) * 100 for x, y in zip(a, b)]
        rows.append({
            "backend": backend,
            "device": first[0]["device"],
            "candidates": len(a),
            "latency range ms": f"{min(a):.4f} – {max(a):.4f}",
            "median diff between processes": f"{statistics.median(diff):.1f}%",
            "p90 diff": f"{sorted(diff)[int(0.9 * (len(diff) - 1))]:.1f}%",
            "max diff": f"{max(diff):.1f}%",
            "Spearman 1st vs 2nd": f"{spearman(a, b):.3f}",
            "median CV of runs": f"{statistics.median(r['cv'] for r in first):.3f}",
        })
        print(json.dumps(rows[-1]), flush=True)
    table = markdown_table(rows)
    print(table)
    body = (
        f"{args.candidates} candidates sampled from `{shown(args.recipe)}` "
        f"(seeds 0..{args.candidates - 1}), each timed by `slimsearch latency` in two separate processes run back "
        f"to back, {args.max_seconds:g} s cap per candidate. 'diff' is |median₁ − median₂| / mean of the two; "
        "Spearman ranks the candidates by their first and by their second median; 'CV of runs' is the per-run "
        "coefficient of variation inside one measurement.\n\n" + table + f"\n\n{load_note()}"
    )
    write_section("latency_repeatability", "Latency repeatability", body)


if __name__ == "__main__":
    main()
