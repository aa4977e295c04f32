"""The Network Slimming and Tucker-2 benchmark scripts at smoke size: each runs end to end and writes its section,
with one table row per matched point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def smoke(script: str, results: Path) -> str:
    subprocess.run([sys.executable, f"benchmarks/{script}.py", "--smoke", "--no-progress", "--results", str(results)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return results.read_text()


@pytest.mark.slow
def test_slimming_benchmark_writes_one_row_per_pruned_share(tmp_path):
    text = smoke("slimming", tmp_path / "RESULTS.md")
    assert "<!-- slimming-digits_prune-l1-0.03-smoke:start -->" in text and "slimming-digits_prune-l1-0.03-smoke:end" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.40 |")]
    assert len(rows) == 1 and "Command: `python benchmarks/slimming.py --smoke" in text
    assert "|γ| median" in text and "Machine: " in text


@pytest.mark.slow
def test_tucker2_benchmark_compares_three_forms_at_one_share(tmp_path):
    text = smoke("tucker2", tmp_path / "RESULTS.md")
    assert "<!-- tucker2-digits_prune-smoke:start -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.25 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["tucker2", "spatial", "channel"]
    assert rows[0].count("+0.0000") == 2  # tucker2 against itself
