"""Write the small input files that `examples/demo.jsonl` refers to (deterministic, a few KB each).

    python examples/make_inputs.py [DIR]      # default: the folder of this script

- `source.wav`: 10 s 44.1 kHz mono, a scene like the embedded `small` model's training data: pink
  noise with a siren from 3 s to about 5 s at 2 dB over the noise (the edit source and the
  understanding audio; sounds from `examples/sounds/make_sounds.py`);
- `voice.wav`: 2 s 44.1 kHz mono (a gliding tone), the voice prompt for TTS / voice conversion;
- `video_frames.npy`: uint8 frames (T, 3, H, W) at 5 fps, standing in for a decoded video;
- `sync_features.npy`: (240, 768) float32 Synchformer-shaped features of that video.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent / "sounds"))
import make_sounds

RATE_HZ = 44_100
SCENE_S, EVENT_AT_S, EVENT_SNR_DB = 10.0, 3.0, 2.0


def scene(rng: np.random.Generator) -> np.ndarray:
    """10 s of pink noise with a siren at `EVENT_AT_S`, `EVENT_SNR_DB` above the noise over its span."""
    up = make_sounds.SR, RATE_HZ
    noise = soxr.resample(make_sounds.background("pink", rng, dur_s=SCENE_S), *up)[: round(SCENE_S * RATE_HZ)]
    event = soxr.resample(make_sounds.siren(rng), *up)
    start = round(EVENT_AT_S * RATE_HZ)
    span = slice(start, start + event.size)
    gain = np.sqrt(np.mean(noise[span] ** 2) * 10 ** (EVENT_SNR_DB / 10) / np.mean(event**2))
    out = noise.copy()
    out[span] += gain * event
    return (out * min(1.0, 0.95 / np.abs(out).max())).astype(np.float32)  # levels as the training pairs have


def make_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    source = scene(rng)
    t2 = np.arange(2 * RATE_HZ) / RATE_HZ
    voice = (0.3 * np.sin(2 * np.pi * (150 + 60 * t2) * t2)).astype(np.float32)
    frames = rng.integers(0, 256, size=(4, 3, 56, 56), dtype=np.uint8)  # 0.8 s at 5 fps
    sync = (0.1 * rng.standard_normal((240, 768))).astype(np.float32)
    out = [
        folder / "source.wav",
        folder / "voice.wav",
        folder / "video_frames.npy",
        folder / "sync_features.npy",
    ]
    sf.write(out[0], source, RATE_HZ, subtype="PCM_16")
    sf.write(out[1], voice, RATE_HZ, subtype="PCM_16")
    np.save(out[2], frames)
    np.save(out[3], sync)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for path in make_inputs(target):
        print(path)
