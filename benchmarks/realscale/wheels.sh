#!/usr/bin/env bash
# Wheels for the real-scale run (python -m benchmarks.realscale) on a GPU machine that has torch, torchvision, onnx,
# onnxruntime, numpy, scipy, pandas, rich, matplotlib, PyYAML, tqdm, tabulate and portalocker but not what
# slimsearch adds: optuna (+ alembic, Mako, SQLAlchemy, colorlog), torch-pruning, fvcore (+ iopath, yacs,
# termcolor) and pydantic (+ pydantic-core, annotated-types, typing-inspection, typing-extensions). Versions are
# those of the development environment. Writes .whl/ (ignored by git) for CPython 3.12 on manylinux x86_64;
# fvcore and iopath publish source only, so pure-Python wheels are built from their sources here.
# Usage: bash benchmarks/realscale/wheels.sh [PYTHON]   (run from anywhere; PYTHON defaults to python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-python3}"
DEST=.whl
BINARY=(
  optuna==5.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 colorlog==6.12.0
  torch-pruning==1.6.1 yacs==0.1.8 termcolor==3.3.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
)
SOURCE_ONLY=(fvcore==0.1.5.post20221221 iopath==0.1.10)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$DEST" "${SOURCE_ONLY[@]}"
ls -l "$DEST"
du -cb "$DEST"/*.whl | tail -1 | awk '{printf "%d wheels, %.1f MiB in '"$DEST"'/\n", '"$(ls "$DEST"/*.whl | wc -l)"', $1 / 1048576}'
