"""Results of the real-scale benchmark: one JSON and one markdown report, rewritten as each stage ends; the
final table beside published ResNet-56 figures; the ONNX Runtime CPU column filled in later from the ONNX
files the GPU run packed; and the section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from benchmarks.results import machine, markdown_table, write_section
from evaluators.latency import get_backend
from evaluators.latency.timing import interleaved

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
TABLE_ZIP = "table_onnx.zip"
FRONT_ZIP = "front_onnx.zip"
SECTION = "realscale-resnet56-cifar10"

# ResNet-56 on CIFAR-10 as the papers report it (accuracy on the test set; their speed-ups count FLOPs / MACs,
# not time). AMC: He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018,
# Table 2 (50% FLOPs, fine-tuned). Torch-Pruning: Fang et al., "DepGraph: Towards Any Structural Pruning",
# CVPR 2023, and Torch-Pruning's benchmarks/readme.md (global L1 and group pruning at 2.12-2.13× MACs).
PUBLISHED = [
    {"method": "AMC (RL agent, per-layer ratios)", "base_acc": 0.928, "test_acc": 0.919, "delta": -0.009,
     "flops_reduction": 0.50, "note": "He et al. 2018, Table 2: 50% FLOPs, fine-tuned"},
    {"method": "Torch-Pruning global L1", "base_acc": 0.9353, "test_acc": 0.9293, "delta": -0.0060,
     "flops_reduction": 1 - 1 / 2.12, "note": "Fang et al. 2023 / Torch-Pruning benchmarks: 2.12× MACs"},
    {"method": "Torch-Pruning DepGraph (group norm, sparse training)", "base_acc": 0.9353, "test_acc": 0.9391,
     "delta": 0.0038, "flops_reduction": 1 - 1 / 2.13, "note": "Fang et al. 2023: 2.13× MACs"},
]


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _cell(text: str) -> str:
    """Text that stays inside its markdown table cell."""
    return str(text).replace("|", "\\|")


class Results:
    """results.json and results.md in one folder, rewritten (atomically) whenever a stage records something."""

    def __init__(self, folder: Path, data: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.data: dict[str, Any] = data or {"meta": {}, "stages": {}, "table": [], "published": PUBLISHED}

    @classmethod
    def load(cls, source: Path, folder: Path) -> "Results":
        path = Path(source) / RESULTS_JSON
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file; point at the folder a real-scale run wrote (--out)")
        return cls(folder, json.loads(path.read_text()))

    def stage(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, text in ((RESULTS_JSON, json.dumps(self.data, indent=1, default=str)),
                           (RESULTS_MD, render(self.data))):
            tmp = self.folder / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.folder / name)


def _where(meta: dict[str, Any]) -> tuple[str, int]:
    """What the run timed on (GPU, or CPU for a run without one) and its busy batch."""
    return meta.get("timing_device", "GPU"), int(meta.get("busy_batch", 256))


def final_rows(data: dict[str, Any]) -> list[dict[str, str]]:
    """The headline table: this run's base and methods, then the published figures."""
    dev, busy = _where(data.get("meta", {}))
    cols = (f"{dev} speed-up, batch {busy}", f"{dev} speed-up, batch 1", "CPU ORT speed-up, batch 1")
    rows = []
    for r in data.get("table", []):
        rows.append({
            "method": _cell(r["method"]), "source": "measured", "test acc": _fmt(r.get("test_acc"), ".4f"),
            "Δ vs base (points)": _fmt(None if r.get("delta") is None else 100 * r["delta"], "+.2f"),
            "FLOPs −": _fmt(r.get("flops_reduction"), ".1%"), "params −": _fmt(r.get("params_reduction"), ".1%"),
            cols[0]: _fmt(r.get("speedup_busy"), ".2f", "×"), cols[1]: _fmt(r.get("speedup_b1"), ".2f", "×"),
            cols[2]: _fmt(r.get("cpu_speedup_b1"), ".2f", "×"), "notes": _cell(r.get("note", "")),
        })
    for p in data.get("published", []):
        rows.append({
            "method": p["method"], "source": "published", "test acc": f"{p['test_acc']:.4f} (base {p['base_acc']:.4f})",
            "Δ vs base (points)": f"{100 * p['delta']:+.2f}", "FLOPs −": f"{p['flops_reduction']:.1%}", "params −": "–",
            **{c: "–" for c in cols}, "notes": p["note"],
        })
    return rows


def policy_rows(policies: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, str]]:
    """Policies at the short fine-tune (the study's front, the baselines): what each one costs and scores."""
    dev, busy = _where(meta)
    return [{
        "policy": _cell(p["label"]), "val acc": _fmt(p.get("val_acc"), ".4f"),
        "FLOPs −": _fmt(p.get("flops_reduction"), ".1%"),
        "params −": _fmt(p.get("params_reduction"), ".1%"), f"{dev} ms, b{busy}": _fmt(p.get("ms_busy"), ".3f"),
        f"speed-up b{busy}": _fmt(p.get("speedup_busy"), ".2f", "×"), f"{dev} ms, b1": _fmt(p.get("ms_b1"), ".3f"),
        "speed-up b1": _fmt(p.get("speedup_b1"), ".2f", "×"), "CPU ORT ms, b1": _fmt(p.get("cpu_ms_b1"), ".3f"),
        "CPU speed-up": _fmt(p.get("cpu_speedup_b1"), ".2f", "×"),
    } for p in policies]


def render(data: dict[str, Any], header: bool = True) -> str:
    """The markdown report of whatever stages have finished (`header`: with its title and the run's stamp)."""
    meta, stages = data.get("meta", {}), data.get("stages", {})
    out = []
    if header:
        out += ["# Real scale: ResNet-56 on CIFAR-10, trained, searched, compressed, measured", ""]
        if meta:
            out += [f"Command: `{meta.get('command', '')}`  ", f"Machine: {meta.get('machine', '')}  ",
                    f"Date: {meta.get('date', '')}", ""]
    if "cpu" in meta:
        cpu = meta["cpu"]
        out += [f"CPU column: `{cpu['command']}` on {cpu['machine']}, {cpu['date']} ({cpu['device']}).", ""]
    for name, record in stages.items():
        if record.get("error"):
            out += [f"**Stage {name} failed**: `{record['error']}`", ""]
    if data.get("table"):
        out += ["## Result", "", markdown_table(final_rows(data)), ""]
        if stages.get("4"):
            out += [stages["4"].get("summary", ""), ""]
    if stages.get("1"):
        out += ["## Stage 1: the base", "", stages["1"].get("summary", ""), ""]
    if stages.get("2"):
        s2 = stages["2"]
        out += ["## Stage 2: the study", "", s2.get("summary", ""), "",
                markdown_table(policy_rows(s2.get("front", []), meta)), ""]
    if stages.get("3"):
        s3 = stages["3"]
        out += ["## Stage 3: baselines at the study's fine-tune", "", s3.get("summary", ""), "",
                markdown_table(policy_rows(s3.get("policies", []), meta)), ""]
    timing = [f"{k}: {v.get('seconds', 0):.0f} s" for k, v in stages.items() if isinstance(v, dict) and "seconds" in v]
    if timing:
        out += ["Stage times: " + ", ".join(timing) + ".", ""]
    return "\n".join(out)


def _onnx_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row that names an ONNX file: the final table, the study's front and the baselines."""
    stages = data.get("stages", {})
    return [*data.get("table", []), *stages.get("2", {}).get("front", []), *stages.get("3", {}).get("policies", [])]


def time_onnx(source: Path, folder: Path, command: str, rounds: int = 7, runs: int = 100) -> Results:
    """Time every ONNX file packed by a GPU run in `source` with ONNX Runtime on this CPU (one thread, batch 1),
    all of them interleaved with the base's ONNX file in one process (`evaluators.latency.timing.interleaved`),
    and fill the CPU columns (median latency and the median per-round speed-up over the base); written to `folder`."""
    results = Results.load(source, folder)
    backend = get_backend("onnxruntime", threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        for name in (TABLE_ZIP, FRONT_ZIP):
            pack = Path(source) / name
            if pack.is_file():
                with zipfile.ZipFile(pack) as z:
                    paths.update({m: Path(z.extract(m, tmp)) for m in z.namelist()
                                  if m.endswith(".onnx") and m not in paths})
        if "base.onnx" not in paths:
            raise SystemExit(f"error: {source}/{TABLE_ZIP} holds no base.onnx; was stage 4 of the GPU run finished?")
        order = ["base.onnx", *sorted(m for m in paths if m != "base.onnx")]
        timed = {c.name: c for c in interleaved({m: backend.runner(paths[m], 1) for m in order}, "base.onnx",
                                                rounds=rounds, runs=runs)}
    for name, c in timed.items():
        print(f"  {name}: {c.median_ms:.3f} ms, {c.speedup:.2f}× [{c.speedup_low:.2f}–{c.speedup_high:.2f}]", flush=True)
    for row in _onnx_rows(results.data):
        c = timed.get(row.get("onnx", ""))
        if c is not None:
            row["cpu_ms_b1"], row["cpu_speedup_b1"] = c.median_ms, c.speedup
    results.data["meta"]["cpu"] = {
        "command": command, "machine": machine(), "device": backend.device(),
        "backend": f"onnxruntime {backend.version()}", "date": _now(),
        "timing": f"interleaved with base.onnx, {rounds} rounds × {runs} runs, median per-round speed-up",
    }
    results.save()
    return results


def _now() -> str:
    import datetime as dt

    return dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def write_results(results: Results, path: Path | None = None) -> Path:
    """The report as its own section of benchmarks/RESULTS.md (or `path`), stamped with the GPU run's command,
    machine and date; the CPU column's command and machine are named in the body."""
    meta = results.data.get("meta", {})
    return write_section(
        SECTION,
        "Real scale: ResNet-56 on CIFAR-10 — searched vs uniform vs Torch-Pruning global pruning (AMC's setting)",
        render(results.data, header=False), command=meta.get("command"), machine_name=meta.get("machine"),
        date=meta.get("date"), **({"path": path} if path else {}),
    )
