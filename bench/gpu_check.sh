#!/usr/bin/env bash
# The GPU check in one command on a GPU machine that may start bare: install what its Python
# lacks, then run bench/gpu_check.py (every part, within its time budget; arguments pass on).
#
#   bash bench/gpu_check.sh                 # results: bench/results/gpu_check_<gpu>.md
#   bash bench/gpu_check.sh --only resume   # one part
#
# Install, in this order:
#   - a machine with no internet (this workplace's device machine, whose image has a CUDA
#     torch, Lightning, tokenizers, transformers): the wheels in .gpu/wheels (bench/gpu_carry.sh
#     fills them) go to /tmp/llmpipe-site, nothing else is touched;
#   - otherwise, when the project does not import: `pip install -e .` (on Linux x86-64 PyPI's
#     torch==2.13.0 is the CUDA build).
# The configs read the shared data beside the checkout (../shared/data); where it is absent and
# .gpu/shared holds a copy (gpu_carry.sh), ../shared points there. A nanoGPT checkout in
# .gpu/nanoGPT is timed as the Shakespeare reference.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/llmpipe-site .gpu/wheels/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/llmpipe-site"
elif ! $PY -c "import pipeline.config, pytorch_lightning, rouge_score, ftfy" 2>/dev/null; then
  $PY -m pip install -q -e . || exit 1
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "install: $(( $(date +%s) - start )) s"

if [ ! -e ../shared/data ] && [ -d .gpu/shared/data ]; then
  ln -sfn "$PWD/.gpu/shared" ../shared
fi
nanogpt=()
if [ -f .gpu/nanoGPT/train.py ]; then nanogpt=(--nanogpt .gpu/nanoGPT); fi
exec $PY bench/gpu_check.py "${nanogpt[@]}" "$@"
