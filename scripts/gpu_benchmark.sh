#!/usr/bin/env bash
# benchmarks/gpu.py on a bare CUDA machine (Python 3.12 with torch, no registry): install the wheels that
# scripts/gpu_wheels.sh put in .whl/ into a folder of their own, run the benchmark, and leave its JSON, its log and
# the profile tables in $OUT. Arguments go to the benchmark (e.g. --sections inference,compile).
#
#     OUT=/path/to/results bash scripts/gpu_benchmark.sh          # about 8 minutes on an H200 (--budget 420)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu}
BUDGET=${BUDGET:-420}  # seconds after which no new measurement starts; the one in flight finishes
DEPS=${DEPS:-.whl/site}  # inside the ignored .whl/
PYTHON=${PYTHON:-python3}
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: run 'bash scripts/gpu_wheels.sh' on a machine with a package registry, then copy" \
         "the repository with its .whl/ folder here" >&2
    exit 2
fi
mkdir -p "$OUT"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$DEPS" .whl/*.whl
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
PYTHONPATH="$DEPS:$(pwd)" PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu.py --out "$OUT/gpu.json" --budget "$BUDGET" \
    "$@" 2>&1 | tee "$OUT/gpu.log"
