#!/usr/bin/env bash
# One stage of the demo recipe's GPU sizes on a bare CUDA machine with torch alone (no Prefect, PyAV or dlib), in
# under ten minutes, resuming from and handing back a packed run:
#
#   bash scripts/demo_gpu_stage.sh STAGE MINUTES [key=value ...]      e.g.  bash scripts/demo_gpu_stage.sh generator 6
#
# Expects, in the checkout: .whl/ (the wheels for Python 3.12 of pydantic, pydantic_core, annotated_types,
# typing_inspection, typing_extensions, zarr, numcodecs, donfig, google_crc32c) and, from earlier sessions, the
# packed runs in .gpu-carry/ (*.tar.partNN; none for the first). Writes into $OUT (default: ./gpu-out): the stage's
# packed run (parts of at most 15 MiB, its latest checkpoint in fp16: copy them into .gpu-carry/ for the next
# session, where an unfinished stage continues and a finished one can train longer), provenance.json, the last sample grid and the log. The world is rendered
# again from its seed on every fresh machine (one process per core); the stages after the encoder encode it again
# (the unpacked encoder run installs G and the encoder). Stages in order: generator (many sessions), encoder,
# directions, feature-transformer; then, on a machine with the full environment, `python -m training.demo_recipe
# --work W --configs gpu --unpack .gpu-carry --stage heldout` (after `--stage world`) for the held-out figures.
set -euo pipefail
stage=${1:?stage: generator, encoder, encode, directions or feature-transformer}
minutes=${2:?minutes of training}
shift 2
out=${OUT:-gpu-out}
work=${WORK:-outputs/demo-gpu}  # inside the checkout (outputs/ is ignored): kept while the machine stays warm
site=$PWD/outputs/gpu-site
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1
recipe() { python3 -m training.demo_recipe --work "$work" --configs gpu "$@"; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
if compgen -G ".gpu-carry/*.tar.part00" > /dev/null; then recipe --unpack .gpu-carry; fi
recipe --stage world --workers "$(nproc)"
case "$stage" in  # A and the transformer read the world's face3d and inversion stages (from the unpacked encoder)
  directions|feature-transformer) recipe --stage encode ;;
esac
recipe --stage "$stage" --minutes "$minutes" "$@"
case "$stage" in
  generator|encoder|directions|feature-transformer) recipe --stage "$stage" --pack "$out" ;;
esac
cp "$work/weights/demo/provenance.json" "$out/" 2>/dev/null || true
last=$(ls -t "$work/train-$stage/samples/"*.png 2>/dev/null | head -1 || true)
if [ -n "$last" ]; then cp "$last" "$out/samples-$stage.png"; fi
