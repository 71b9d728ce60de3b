#!/usr/bin/env bash
# One prepared GPU check of the sampler (issue 7). Prints one JSON object as its last line.
#
#   bash bench/gpu_check.sh [--preset full|tiny] [--quick] [--out FILE]
#
# Python: $PYTHON if set, else the project venv when it can import torch and diffusers, else the
# system python3 (on the lent GPU machine: its CUDA torch). Packages that python lacks (diffusers,
# importlib_metadata) are installed offline into a private folder from the wheels in bench/.wheels/
# (git-ignored; fetch them beforehand with
#   pip download --no-deps --only-binary=:all: -d bench/.wheels diffusers==0.42.1 importlib_metadata
# and carry that folder); nothing is fetched from the network here.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch, diffusers' 2>/dev/null; then
    py=.venv/bin/python
else
    py=python3
fi

if ! "$py" -c 'import diffusers' 2>/dev/null; then
    shopt -s nullglob
    wheels=(bench/.wheels/*.whl)
    if (( ${#wheels[@]} == 0 )); then
        echo "gpu_check: $py cannot import diffusers and bench/.wheels/ holds no wheels" >&2
        exit 2
    fi
    site="${TMPDIR:-/tmp}/gpu_check_site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "gpu_check: python $("$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')" >&2
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
export PYTHONUNBUFFERED=1
exec "$py" bench/gpu_check.py "$@"
