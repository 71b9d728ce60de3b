#!/usr/bin/env bash
# Train the `small` model into model/data/small/ (see docs/model.md, "The embedded small model").
#   scripts/train_small.sh [DEVICE]      DEVICE: cuda (default; one H100/H200, about 20 min) or cpu
# Each training stage stops at its wall-time budget, so a faster machine takes more steps in the same time.
# On this project's 2-core CPU machines the same recipe (cpu) ran 3000 VAE steps in 25 min and the VAE
# did NOT learn to reconstruct (docs/model.md): use a GPU.
# Extra arguments for the vae and dit phases: TRAIN_ARGS='--vae-s 600 --dit-s 600'
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${1:-cuda}
WORK=${WORK:-.small_run}
ARGS=(--work "$WORK" --device "$DEVICE" --threads "$(nproc)" --workers "$(nproc)" --per-class 12)
if [ "$DEVICE" = cpu ]; then
    VAE=(--pairs 160 --vae-batch 8 --vae-crop 8192 --vae-s 1500)
    DIT=(--pairs 160 --batch 32 --dit-s 1500)
else
    VAE=(--pairs 512 --vae-batch 32 --vae-crop 65536 --vae-s 600)
    DIT=(--pairs 512 --batch 64 --dit-s 300)
fi
# 1. thinker rows of the 20 prompts (5 classes x 4 tasks) and the thinker's weights (seconds)
$PY bench/train_small.py features --work "$WORK"
# 2. sounds -> edit pairs -> VAE on random crops, latents rescaled to unit std
$PY bench/train_small.py vae "${ARGS[@]}" "${VAE[@]}" ${TRAIN_ARGS:-}
# 3. the same pairs -> latents and log-mels -> DiT + conditioner heads on 4 examples per pair
$PY bench/train_small.py dit "${ARGS[@]}" "${DIT[@]}" ${TRAIN_ARGS:-}
# 4. released-name safetensors (sampler fp16, thinker fp32) + config.json + train_summary.json
$PY bench/train_small.py export --work "$WORK" --dst model/data/small
# 5. held-out figures (remove/extract raw and with keep_source, text-to-audio classifier)
$PY bench/eval_small.py
