"""Write the small input files that `examples/demo.jsonl` and `examples/workflows.jsonl` refer to
(deterministic; a few KB to 2 MB each).

    python examples/make_inputs.py [DIR]      # default: the folder of this script

- `source.wav`: 10 s 44.1 kHz mono, a scene like the embedded `small` model's training data: pink
  noise with a siren from 3 s to about 5 s at 2 dB over the noise (the edit source and the
  understanding audio; sounds from `examples/sounds/make_sounds.py`);
- `voice.wav`: 2 s 44.1 kHz mono (a gliding tone), the voice prompt for TTS / voice conversion;
- `video_frames.npy`: uint8 frames (T, 3, H, W) at 5 fps, standing in for a decoded video;
- `sync_features.npy`: (240, 768) float32 Synchformer-shaped features of that video;
- `speech.wav`: 3 s 16 kHz mono, a speech-like signal (a voiced pulse train through vowel formants,
  syllable by syllable): the source speech of the voice-conversion workflow;
- `long.wav`: 45 s 22.05 kHz mono pink noise with a siren every 15 s, longer than the thinker's
  30 s window (the long-understanding job of `workflows.jsonl`);
- `clip.mp4`: a real 3 s 25 fps H.264 video (160x120) of a ball bouncing across a moving gradient,
  made with PyAV: the video-to-audio job with `output_format: "mp4"` returns it with a soundtrack.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
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


SPEECH_RATE_HZ = 16_000
SPEECH_S, SYLLABLE_S, PITCH_HZ = 3.0, 0.25, 120.0
# (F1, F2, F3) in Hz of the vowels the syllables cycle through: /a/, /i/, /u/, /e/, /o/.
VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
LONG_S, LONG_EVENT_EVERY_S = 45.0, 15.0


def speech_like(rng: np.random.Generator) -> np.ndarray:
    """`SPEECH_S` of a voiced source (a pulse train with a little pitch drift) shaped by a vowel's
    three formants per syllable, with a short gap between syllables: a stand-in for speech."""
    n_syl = round(SYLLABLE_S * SPEECH_RATE_HZ)
    t = np.arange(n_syl) / SPEECH_RATE_HZ
    out = []
    for i in range(round(SPEECH_S / SYLLABLE_S)):
        f0 = PITCH_HZ * (1 + 0.08 * np.sin(2 * np.pi * 1.5 * t + i))
        phase = np.cumsum(f0) / SPEECH_RATE_HZ
        source = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)  # one pulse per period
        spec = np.fft.rfft(source + 0.02 * rng.standard_normal(n_syl))
        freqs = np.fft.rfftfreq(n_syl, 1 / SPEECH_RATE_HZ)
        formants = VOWEL_FORMANTS_HZ[i % len(VOWEL_FORMANTS_HZ)]
        gain = sum(np.exp(-0.5 * ((freqs - f) / (60 + 0.05 * f)) ** 2) for f in formants)
        syllable = np.fft.irfft(spec * gain, n_syl) * np.hanning(n_syl)
        out.append(syllable / max(1e-9, np.abs(syllable).max()))
    x = np.concatenate(out)
    return (0.5 * x).astype(np.float32)


def long_scene(rng: np.random.Generator) -> np.ndarray:
    """`LONG_S` of pink noise at the sound generator's rate with a siren every `LONG_EVENT_EVERY_S`."""
    out = make_sounds.background("pink", rng, dur_s=LONG_S)
    for start_s in np.arange(5.0, LONG_S, LONG_EVENT_EVERY_S):
        event = make_sounds.siren(rng)
        start = round(start_s * make_sounds.SR)
        out[start : start + event.size] += event[: out.size - start]
    return (out * min(1.0, 0.95 / np.abs(out).max())).astype(np.float32)


CLIP_S, CLIP_FPS, CLIP_W, CLIP_H = 3.0, 25, 160, 120


def clip_frame(i: int) -> np.ndarray:
    """Frame i of the clip, RGB (H, W, 3): a horizontal gradient drifting left and a ball bouncing
    off the floor once a second while it crosses the picture."""
    x = np.arange(CLIP_W)[None, :]
    y = np.arange(CLIP_H)[:, None]
    t = i / CLIP_FPS
    img = np.zeros((CLIP_H, CLIP_W, 3), np.uint8)
    img[..., 2] = (90 + 60 * np.sin(2 * np.pi * (x / CLIP_W + 0.3 * t))).astype(np.uint8)
    img[..., 1] = (40 + 40 * y / CLIP_H).astype(np.uint8)
    cx = 20 + (CLIP_W - 40) * t / CLIP_S
    cy = CLIP_H - 16 - (CLIP_H - 40) * abs(np.sin(np.pi * t))  # touches the floor at each whole second
    ball = (x - cx) ** 2 + (y - cy) ** 2 <= 12**2
    img[ball] = (250, 200, 40)
    return img


def write_clip(path: Path) -> None:
    """`clip_frame`s as an H.264 MP4 (one encoder thread, so the bytes are the same every run)."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=CLIP_FPS, options={"threads": "1", "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = CLIP_W, CLIP_H, "yuv420p"
        for i in range(round(CLIP_S * CLIP_FPS)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(clip_frame(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


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
    workflow_rng = np.random.default_rng(5678)  # its own stream: the files above stay byte-identical
    out += [folder / "speech.wav", folder / "long.wav"]
    sf.write(out[4], speech_like(workflow_rng), SPEECH_RATE_HZ, subtype="PCM_16")
    sf.write(out[5], long_scene(workflow_rng), make_sounds.SR, subtype="PCM_16")
    out.append(folder / "clip.mp4")
    write_clip(out[6])
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for path in make_inputs(target):
        print(path)
