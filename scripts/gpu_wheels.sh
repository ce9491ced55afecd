#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu.py needs beyond torch, for a bare CUDA machine with Python 3.12 and no
# registry (torch, numpy and torchvision come with the machine's torch installation), into .whl/ (ignored by git),
# then print the commands that run the benchmark there. The list is what the benchmark imports, pinned to this
# checkout's versions (`python benchmarks/gpu.py --requirements`).
#
#     bash scripts/gpu_wheels.sh                 # then copy the repository with .whl/ to the machine
#     PYTHON_VERSION=3.11 bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
ABI="cp${PYTHON_VERSION/./}"
mkdir -p .whl
"$PYTHON" benchmarks/gpu.py --requirements > .whl/requirements.txt
# manylinux2014 is glibc 2.17; newer wheels are tagged manylinux_2_28: both run on the machine's glibc
"$PYTHON" -m pip download -q --dest .whl --only-binary=:all: --no-deps \
    --python-version "$PYTHON_VERSION" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -r .whl/requirements.txt
echo "$(ls .whl/*.whl | wc -l) wheels, $(du -ch .whl/*.whl | tail -1 | cut -f1) in .whl/ for Python $PYTHON_VERSION:"
sed 's/^/    /' .whl/requirements.txt
cat <<'USAGE'
On the machine, from the repository root (with its .whl/), writing everything under $OUT:
    OUT=/path/to/results bash scripts/gpu_benchmark.sh
which does:
    python3 -m pip install -q --no-index --no-deps --no-compile --target .whl/site .whl/*.whl
    PYTHONPATH=.whl/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out "$OUT/gpu.json" --budget 420 \
        2>&1 | tee "$OUT/gpu.log"
USAGE
