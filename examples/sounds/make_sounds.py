"""Generate offline sound folders for edit-pair synthesis (no downloads, all synthetic).

    python examples/sounds/make_sounds.py --out examples/sounds/generated --per-class 8 --seed 0

writes `foreground/<class>/*.wav` (tone, chord, clicks, noise burst, siren; plus `speech` when
`espeak-ng` is installed) and `background/*.wav` (pink and brown noise, mains hum, crackle), 22.05 kHz
mono 16-bit. Everything is generated from the seed, so it is licence-free (see docs/data.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050


def _env(n: int, attack_s: float = 0.01, release_s: float = 0.05) -> np.ndarray:
    a, r = max(1, int(attack_s * SR)), max(1, int(release_s * SR))
    env = np.ones(n)
    env[:a] = np.linspace(0, 1, a)
    env[-r:] = np.minimum(env[-r:], np.linspace(1, 0, r))
    return env


def tone(rng: np.random.Generator) -> np.ndarray:
    dur, f = rng.uniform(0.6, 1.5), rng.uniform(300, 900)
    t = np.arange(int(dur * SR)) / SR
    return 0.5 * np.sin(2 * np.pi * f * t) * _env(t.size)


def chord(rng: np.random.Generator) -> np.ndarray:
    dur, root = rng.uniform(0.8, 1.6), rng.uniform(180, 360)
    t = np.arange(int(dur * SR)) / SR
    x = sum(np.sin(2 * np.pi * root * ratio * t) for ratio in (1.0, 1.26, 1.5, 2.0))
    return 0.3 * x * _env(t.size, 0.02, 0.3) * np.exp(-t * 1.5)


def clicks(rng: np.random.Generator) -> np.ndarray:
    dur, rate = rng.uniform(0.8, 1.5), rng.uniform(4, 12)
    n = int(dur * SR)
    x = np.zeros(n)
    click = np.exp(-np.arange(200) / 20.0) * rng.choice([-1, 1], 200)
    for start in np.arange(0, dur, 1 / rate):
        i = int(start * SR)
        x[i : i + 200] += click[: n - i]
    return 0.8 * x


def noise_burst(rng: np.random.Generator) -> np.ndarray:
    dur = rng.uniform(0.4, 1.2)
    n = int(dur * SR)
    return 0.4 * rng.standard_normal(n) * _env(n, 0.005, 0.2)


def siren(rng: np.random.Generator) -> np.ndarray:
    dur, lo, hi, rate = rng.uniform(1.0, 2.0), rng.uniform(500, 700), rng.uniform(900, 1300), rng.uniform(1, 3)
    t = np.arange(int(dur * SR)) / SR
    f = lo + (hi - lo) * 0.5 * (1 + np.sin(2 * np.pi * rate * t))
    return 0.4 * np.sin(2 * np.pi * np.cumsum(f) / SR) * _env(t.size)


WORDS = ["hello", "ready", "seven", "audio", "window", "yellow", "garden", "number", "listen", "morning"]


def speech(rng: np.random.Generator) -> np.ndarray | None:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    text = " ".join(rng.choice(WORDS, size=3))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run([exe, "-w", str(path), "-s", str(int(rng.integers(140, 190))), text], check=True)
        x, sr = sf.read(path, dtype="float64")
    import soxr

    return 0.8 * soxr.resample(x, sr, SR) / max(1e-9, np.abs(x).max())


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size)
    f[0] = 1
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return x / np.abs(x).max()


def background(kind: str, rng: np.random.Generator, dur_s: float = 12.0) -> np.ndarray:
    n = int(dur_s * SR)
    if kind == "pink":
        return 0.2 * _colored(rng, n, 1.0)
    if kind == "brown":
        return 0.25 * _colored(rng, n, 2.0)
    if kind == "hum":
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        return 0.1 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) + 0.02 * rng.standard_normal(n)
    if kind == "crackle":
        x = 0.02 * rng.standard_normal(n)
        idx = rng.integers(0, n, size=int(dur_s * 30))
        x[idx] += rng.uniform(-0.3, 0.3, size=idx.size)
        return x
    raise ValueError(f"unknown background kind {kind!r}")


CLASSES: dict[str, Callable[[np.random.Generator], np.ndarray | None]] = {
    "tone": tone,
    "chord": chord,
    "clicks": clicks,
    "noise_burst": noise_burst,
    "siren": siren,
    "speech": speech,
}
BACKGROUNDS = ("pink", "brown", "hum", "crackle")


def generate(
    out: Path,
    *,
    per_class: int = 8,
    backgrounds_per_kind: int = 2,
    seed: int = 0,
    classes: tuple[str, ...] | None = None,
) -> dict[str, int]:
    """Write the folders; returns files written per class (speech is skipped without espeak-ng)."""
    if per_class < 1 or backgrounds_per_kind < 1:
        raise ValueError(f"per_class and backgrounds_per_kind must be >= 1, got {per_class}, {backgrounds_per_kind}")
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for name in classes or tuple(CLASSES):
        for i in range(per_class):
            x = CLASSES[name](rng)
            if x is None:
                break
            path = out / "foreground" / name / f"{name}_{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.clip(x, -1, 1).astype(np.float32), SR, subtype="PCM_16")
            counts[name] = counts.get(name, 0) + 1
    for kind in BACKGROUNDS:
        for i in range(backgrounds_per_kind):
            path = out / "background" / f"{kind}_{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.clip(background(kind, rng), -1, 1).astype(np.float32), SR, subtype="PCM_16")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "generated")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--backgrounds-per-kind", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = generate(
        args.out, per_class=args.per_class, backgrounds_per_kind=args.backgrounds_per_kind, seed=args.seed
    )
    print(f"wrote {sum(counts.values())} foreground files {counts} and backgrounds to {args.out}")


if __name__ == "__main__":
    main()
