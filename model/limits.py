"""The model's user-facing limits, defined once.

Every layer that checks a request imports these: the job schema (`orchestrator.jobs`), the upload
route, the engine's input decoding, and the model's own boundary checks (`model.pipeline`,
`model.parts`). No torch here, so the orchestrator can import this module at its top level.

Where each value comes from:

- `MAX_DURATION_S`: the reference UI's length slider stops at 300 s; longer outputs are stitched
  from 10 s windows (`model.longform`), so the bound is a product choice the model honours, and
  the same bound applies to input audio (an edit's output follows its source's length).
- `MIN_STEPS`..`MAX_STEPS`: Euler steps; the reference default is 100, 1000 is far past any gain.
- `MIN_CFG_SCALE`..`MAX_CFG_SCALE`: classifier-free guidance. 1.0 runs a single conditional
  forward pass (no guidance); below 1 the prediction is pushed towards the unconditional one,
  which the released model was never meant for; past 30 the velocity saturates into noise.
- `MAX_SEED`: the reference draws seeds as numpy uint32, so a seed is an int in [0, 2**32 - 1].
  (The sampler's noise generator itself accepts larger values: long-form segment k samples with
  `seed + k`.)
- `THINKER_WINDOW_S`: the thinker's audio window (30 s); longer question audio is split into windows.
- Video: input video obeys the input audio's 300 s bound (`MAX_INPUT_VIDEO_S`). Resolution is
  checked from the header before any frame is decoded: `MAX_VIDEO_SIDE` admits DCI 4K (4096) and
  `MAX_VIDEO_PIXELS` one 4096x2304 picture (every 4K format), so one decoded RGB frame stays under
  30 MB. Average frame rates outside [`MIN_VIDEO_FPS`, `MAX_VIDEO_FPS`] are refused as absurd: 240
  fps is the fastest common capture rate, and a variable-rate screen recording may average well
  under 1 fps (the model samples 25 fps for sync and 5 fps for the thinker on the timestamps).
- Text: the speech conditioner truncates a transcript at 2584 tokens (about one per character),
  so 2000 characters stay clear of silent truncation; prompts follow the same bound.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CFG_SCALE",
    "DEFAULT_DURATION_S",
    "DEFAULT_STEPS",
    "MAX_CFG_SCALE",
    "MAX_DURATION_S",
    "MAX_INPUT_AUDIO_S",
    "MAX_INPUT_VIDEO_S",
    "MAX_PROMPT_CHARS",
    "MAX_REFERENCED_TEXT_CHARS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_TRANSCRIPT_CHARS",
    "MAX_VIDEO_FPS",
    "MAX_VIDEO_PIXELS",
    "MAX_VIDEO_SIDE",
    "MAX_VOICE_PROMPT_TEXT_CHARS",
    "MIN_CFG_SCALE",
    "MIN_STEPS",
    "MIN_VIDEO_FPS",
    "THINKER_WINDOW_S",
    "VOICE_PROMPT_MAX_S",
]

# Reference defaults (10 s, 100 Euler steps, CFG 7.0).
DEFAULT_DURATION_S = 10.0
DEFAULT_STEPS = 100
DEFAULT_CFG_SCALE = 7.0

MAX_DURATION_S = 300.0  # output length, seconds (long-form tasks; one-window tasks stop at the window)
MAX_INPUT_AUDIO_S = MAX_DURATION_S  # any input audio (edit source, voice prompt, question audio)
MAX_INPUT_VIDEO_S = MAX_DURATION_S  # any input video (video-to-audio/music, understanding)
MAX_VIDEO_SIDE = 4096  # pixels, either side of the stored picture
MAX_VIDEO_PIXELS = 4096 * 2304  # width x height of the stored picture
MIN_VIDEO_FPS, MAX_VIDEO_FPS = 0.1, 240.0  # average frame rate

MIN_STEPS, MAX_STEPS = 1, 1000
MIN_CFG_SCALE, MAX_CFG_SCALE = 1.0, 30.0
MAX_SEED = 2**32 - 1

MAX_PROMPT_CHARS = 2000  # prompt, question, edit description, style source or target
MAX_TRANSCRIPT_CHARS = 2000  # text to speak
MAX_VOICE_PROMPT_TEXT_CHARS = 1000  # what the voice prompt says
# A workflow step's text answer pasted into a later step's text field (`{{step.text}}`) is cut to
# this many characters, so a reference can be checked against the field's limit at submission.
MAX_REFERENCED_TEXT_CHARS = 1000

# The thinker hears at most this much audio per question (its Whisper-style audio encoder reads
# 30 s of features; `model.mllm.QWEN_MAX_AUDIO_S` refuses more). Understanding of longer audio asks
# one question per window and joins the answers (`model.pipeline`).
THINKER_WINDOW_S = 30.0

VOICE_PROMPT_MAX_S = 6.0  # the released model was trained with <= 6 s voice prompts (longer ones are cut)
