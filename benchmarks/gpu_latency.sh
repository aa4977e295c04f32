#!/usr/bin/env bash
# Latency of the same candidates on an NVIDIA GPU: PyTorch as a CUDA graph of the forward and as eager launches
# (CUDA events) and, where it is installed, TensorRT (CUDA graph of execute_async_v3, CUDA events), at batch 1
# and 32, fp32 and fp16.
# Prints a markdown table and writes it to benchmarks/RESULTS.md (one section per recipe and input shape).
#
#   bash benchmarks/gpu_latency.sh                                  # 10 candidates of digits_blocks at 3x224x224
#   INPUT_SHAPE=3,32,32 CANDIDATES=20 bash benchmarks/gpu_latency.sh  # CIFAR-sized input
#
# Needs an NVIDIA GPU and a CUDA build of torch; TensorRT is optional:
#   pip install --extra-index-url https://pypi.nvidia.com tensorrt
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
RECIPE=${RECIPE:-studies/digits_blocks.yaml}
CANDIDATES=${CANDIDATES:-10}
INPUT_SHAPE=${INPUT_SHAPE:-3,224,224}
BATCHES=${BATCHES:-"1 32"}
PRECISIONS=${PRECISIONS:-"fp32 fp16"}
MAX_SECONDS=${MAX_SECONDS:-1}
COMMAND="bash benchmarks/gpu_latency.sh"
for setting in RECIPE=studies/digits_blocks.yaml CANDIDATES=10 INPUT_SHAPE=3,224,224 "BATCHES=1 32" \
               "PRECISIONS=fp32 fp16" MAX_SECONDS=1; do
    name=${setting%%=*}
    [ "${!name}" = "${setting#*=}" ] || COMMAND="$name='${!name}' $COMMAND"
done

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    smi="nvidia-smi not found"
    command -v nvidia-smi >/dev/null 2>&1 && smi="nvidia-smi: $(nvidia-smi -L 2>&1 | head -n 1)"
    echo "error: no NVIDIA GPU here: torch.cuda.is_available() is False ($smi)." >&2
    echo "This benchmark times candidates on a CUDA GPU; run it on a machine with an NVIDIA GPU and driver." >&2
    exit 1
fi

backends="torch torch_eager"
if "$PY" -c 'import tensorrt' 2>/dev/null; then
    backends="torch torch_eager tensorrt"
else
    echo "note: TensorRT is not installed; timing PyTorch only" \
         "(pip install --extra-index-url https://pypi.nvidia.com tensorrt)" >&2
fi

runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
for backend in $backends; do
    for batch in $BATCHES; do
        for precision in $PRECISIONS; do
            echo "timing $CANDIDATES candidates: $backend, batch $batch, $precision" >&2
            graph=true
            [ "$backend" = torch_eager ] && graph=false
            "$PY" -m search.cli latency "$RECIPE" --backend "${backend%_eager}" --candidates "$CANDIDATES" \
                --input-shape "$INPUT_SHAPE" --batch-size "$batch" --precision "$precision" \
                --max-seconds "$MAX_SECONDS" --set "output_dir=$runs/out" --set "latency.cuda_graph=$graph" --json \
                > "$runs/$backend-$batch-$precision.json"
        done
    done
done

"$PY" - "$runs" "$COMMAND" "$RECIPE" "$INPUT_SHAPE" <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, ".")
from benchmarks.results import write_section

runs, command, recipe, shape = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
results = {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}
order = ["torch", "torch_eager", "tensorrt"]
columns = sorted(results, key=lambda k: (order.index(k.split("-")[0]), int(k.split("-")[1]), k.split("-")[2]))
first = results[columns[0]]
header = [c.replace("_", " ").replace("-", " b").replace(" bfp", " fp") for c in columns]
lines = ["| candidate | " + " | ".join(header) + " |",
         "|---|" + "---:|" * len(columns)]
for i, row in enumerate(first):
    cells = [f"{results[c][i]['median_ms']:.3f}" for c in columns]
    label = row["model"].replace("|", "\\|")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
versions = sorted({f"{r[0]['backend']} {r[0]['backend_version']}" for r in results.values()})
builds = {c: sum(r["build_seconds"] for r in results[c]) for c in columns if c.startswith("tensorrt")}
text = (
    f"Device: {first[0]['device']}; engines: {', '.join(versions)}. "
    "Median milliseconds per batch; columns are backend, batch size and precision. `torch` replays a CUDA graph "
    "of the forward, `torch eager` launches the forward from Python, each timed with CUDA events around it; "
    "TensorRT is a CUDA graph of execute_async_v3, timed with CUDA events (GPU compute time, no host copies).\n\n"
    + "\n".join(lines) + "\n"
)
if builds:
    seconds = ", ".join(f"{k}: {v:.1f}" for k, v in builds.items())
    text += f"\nTensorRT engine build seconds, all candidates: {seconds}\n"
key = f"gpu-latency-{Path(recipe).stem}-{shape.replace(',', 'x')}"
write_section(key, f"GPU latency: {Path(recipe).stem}, input {shape}", text, command=command)
print(text)
EOF
