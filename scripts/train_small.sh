#!/usr/bin/env bash
# Train the `small` model into model/data/small/ (see docs/model.md, "The embedded small model").
#   scripts/train_small.sh [DEVICE]      DEVICE: cpu (default; this project's 2-core machines, about an hour) or cuda
# The codec is fixed (fitted, not trained: seconds); the DiT stage stops at its wall-time budget, so a
# faster machine takes more steps in the same time. Extra arguments for the dit phase: TRAIN_ARGS='--dit-s 600'
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${TRAIN:-.venv/bin/audio-omni-train}
DEVICE=${1:-cpu}
WORK=${WORK:-.small_run}
ARGS=(--work "$WORK" --device "$DEVICE" --threads "$(nproc)" --workers "$(nproc)" --per-class 12 --pairs 320)
if [ "$DEVICE" = cpu ]; then
    DIT=(--batch 24 --dit-s 3300 --event-weight 4)
else
    DIT=(--batch 64 --dit-s 600 --event-weight 4)
fi
# 1. thinker rows of the 20 prompts (5 classes x 4 tasks) and the thinker's weights (seconds)
$TRAIN small features --work "$WORK"
# 2. sounds -> edit pairs -> the codec's per-band statistics (under a minute)
$TRAIN small codec "${ARGS[@]}"
# 3. the same pairs -> latents and log-mels -> DiT + conditioner heads on 4 examples per pair
$TRAIN small dit "${ARGS[@]}" "${DIT[@]}" ${TRAIN_ARGS:-}
# 4. released-name safetensors (sampler fp16, thinker fp32) + config.json + train_summary.json
$TRAIN small export --work "$WORK" --dst model/data/small
# 5. held-out figures (remove/extract raw and with keep_source, text-to-audio classifier)
$TRAIN evaluate --cfg-scale 3
