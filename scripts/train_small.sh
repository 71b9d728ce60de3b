#!/usr/bin/env bash
# Train the `small` model into model/data/small/. See docs/model.md, "The embedded small model"
# (the first run, on one H200 with these budgets, did NOT give a VAE that reconstructs).
#   scripts/train_small.sh [DEVICE]      DEVICE: cuda (one H100/H200, ~6 min) or cpu
# The time budgets bound each stage; on a CPU the same budgets give far fewer steps.
# Extra arguments for the train phase: TRAIN_ARGS='--vae-s 300'
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${1:-cuda}
WORK=${WORK:-.small_run}
# 1. thinker rows of the 20 prompts (5 classes x 4 tasks) and the thinker's weights (CPU, seconds)
$PY bench/train_small.py features --work "$WORK"
# 2. sounds -> 512 edit pairs -> VAE (160 s) -> latents -> DiT + conditioner heads (130 s)
$PY bench/train_small.py train --work "$WORK" --device "$DEVICE" --workers "$(nproc)" \
    --pairs 512 --per-class 12 --batch 32 --vae-batch 32 --vae-crop 65536 --vae-s 160 --dit-s 130 ${TRAIN_ARGS:-}
# 3. released-name safetensors (sampler fp16, thinker fp32) + config.json
$PY bench/train_small.py export --work "$WORK" --dst model/data/small
# 4. held-out figures
$PY bench/eval_small.py
