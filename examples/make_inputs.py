"""Write the small input files that `examples/demo.jsonl` refers to (deterministic, a few KB each).

    python examples/make_inputs.py [DIR]      # default: the folder of this script

- `source.wav`: 3 s 44.1 kHz mono (a chord plus soft noise), the edit source and understanding audio;
- `voice.wav`: 2 s 44.1 kHz mono (a gliding tone), the voice prompt for TTS / voice conversion;
- `video_frames.npy`: uint8 frames (T, 3, H, W) at 5 fps, standing in for a decoded video;
- `sync_features.npy`: (240, 768) float32 Synchformer-shaped features of that video.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

RATE_HZ = 44_100


def make_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    t = np.arange(3 * RATE_HZ) / RATE_HZ
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    source = (0.4 * chord + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
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
