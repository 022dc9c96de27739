#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what bench/gpu_check.sh needs on a GPU machine that has no
# internet but a Python with CUDA torch (this workplace's device machine: Python 3.12, torch,
# Lightning, tokenizers, transformers, pandas, sacrebleu already there):
#   .gpu/wheels  the project's other dependencies that image lacks (Python 3.12 wheels)
#   .gpu/shared  the shared data files the GPU configs read (Tiny Shakespeare, the tasks)
# A nanoGPT checkout copied to .gpu/nanoGPT is timed as the Shakespeare reference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .gpu/wheels
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .gpu/wheels pydantic==2.14.4 pydantic_core==2.50.5 annotated-types \
  typing-inspection typing_extensions ftfy wcwidth nltk defusedxml py3langid
$PY -m pip wheel -q --no-deps -w .gpu/wheels rouge-score==0.1.2  # an sdist on PyPI
for file in lm/tinyshakespeare/input.txt \
  eval/sst2/sst2_glue_train_phrases_shared.jsonl.gz eval/sst2/sst2_glue_dev_shared.jsonl \
  eval/squad/squad_v2_dev_subset_shared.json summarization/xsum_test_shared.jsonl.gz \
  translation/multi30k/multi30k_train.jsonl.gz translation/multi30k/multi30k_test_2016_flickr.jsonl
do
  mkdir -p ".gpu/shared/data/$(dirname "$file")"
  cp "../shared/data/$file" ".gpu/shared/data/$file"
done
du -sh .gpu
