"""AudioEdit-style synthesis of instruction-guided edit pairs, run as a Ray Data bulk job.

Each pair puts one foreground event (labelled by its folder name, `dog_bark/x.wav` -> "dog bark")
into a 10 s background at a random onset. The event is pitch-shifted by -3..+3 semitones and
time-stretched by a rate of 0.8..1.2 (WSOLA from `audiotsm`, then a `soxr` resample for the pitch),
and scaled so that its power over the span it occupies is `snr_db` (0..3 dB) above the background's
power over that span. A pair yields four examples (see `shards.EXAMPLE_KINDS`): add, remove, extract
and text-to-audio.

Determinism: pair i draws everything from `numpy.random.default_rng([seed, i])` over the sorted
source listing, so a pair does not depend on which worker built it or in which order. A rejected
event (silent, without speech in a speech class, or off-label by the semantic filter) is redrawn from the same stream.
Resumability: shard k holds pairs [k*S, (k+1)*S) and is written atomically; a rerun skips shards
already stored and refuses to continue a dataset made with other settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.filters import EnergyFilter, SemanticFilter, VoiceActivityFilter, make_semantic_filter
from training.shards import (
    MANIFEST_KEY,
    SETTINGS_KEY,
    SourceTree,
    encode_shard,
    open_storage,
    shard_key,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
MAX_ATTEMPTS = 20  # event redraws per pair before the job fails


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines the bytes of a dataset (stored as `settings.json`)."""

    foreground: str
    background: str
    pairs: int
    seed: int = 0
    shard_size: int = 16
    clip_s: float = 10.0
    sample_rate: int = SAMPLE_RATE
    snr_db: tuple[float, float] = (0.0, 3.0)
    pitch_semitones: tuple[float, float] = (-3.0, 3.0)
    stretch_rate: tuple[float, float] = (0.8, 1.2)
    max_event_s: float = 5.0
    min_event_dbfs: float = -45.0
    clap_weights: str | None = None
    clap_min_score: float = 0.1
    speech_labels: tuple[str, ...] = ("speech",)  # class folders whose events must hold speech (silero-vad)
    min_speech_ratio: float = 0.2

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.pairs > 100_000_000:
            raise ValueError(f"pairs must be in [1, 1e8], got {self.pairs}")
        if not 1 <= self.shard_size <= 4096:
            raise ValueError(f"shard_size must be in [1, 4096], got {self.shard_size}")
        if not 1.0 <= self.clip_s <= 60.0:
            raise ValueError(f"clip_s must be in [1, 60] seconds, got {self.clip_s}")
        if not 8000 <= self.sample_rate <= 192000:
            raise ValueError(f"sample_rate must be in [8000, 192000] Hz, got {self.sample_rate}")
        if not 0.05 <= self.max_event_s <= self.clip_s:
            raise ValueError(f"max_event_s must be in [0.05, clip_s={self.clip_s}], got {self.max_event_s}")
        for name, (low, high), bounds in (
            ("snr_db", self.snr_db, (-30.0, 30.0)),
            ("pitch_semitones", self.pitch_semitones, (-12.0, 12.0)),
            ("stretch_rate", self.stretch_rate, (0.25, 4.0)),
        ):
            if not bounds[0] <= low <= high <= bounds[1]:
                raise ValueError(f"{name} range ({low}, {high}) must satisfy {bounds[0]} <= low <= high <= {bounds[1]}")
        EnergyFilter(self.min_event_dbfs)  # validates the threshold
        VoiceActivityFilter(self.min_speech_ratio)  # validates the ratio
        if any(not label or "/" in label for label in self.speech_labels):
            raise ValueError(f"speech_labels must be class folder names, got {list(self.speech_labels)}")

    @property
    def clip_samples(self) -> int:
        return round(self.clip_s * self.sample_rate)

    @property
    def num_shards(self) -> int:
        return -(-self.pairs // self.shard_size)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("snr_db", "pitch_semitones", "stretch_rate", "speech_labels"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SynthSettings:
        d = dict(d)
        for k in ("snr_db", "pitch_semitones", "stretch_rate", "speech_labels"):
            if k in d:  # datasets made before speech_labels existed get its default
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------- audio helpers


def load_mono(data: bytes, sample_rate: int) -> np.ndarray:
    """Decode a file's bytes to mono float32 at `sample_rate` (channel mean, soxr resampling)."""
    import soundfile as sf
    import soxr

    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def pitch_and_stretch(x: np.ndarray, sample_rate: int, semitones: float, rate: float) -> np.ndarray:
    """Shift pitch by `semitones` and play `rate` times faster (duration / rate).

    WSOLA changes the duration at constant pitch (speed = rate / r, r = 2^(semitones/12)); resampling
    by 1/r then raises the pitch by r and shortens by r, giving duration / rate overall.
    """
    import soxr
    from audiotsm import wsola
    from audiotsm.io.array import ArrayReader, ArrayWriter

    r = 2.0 ** (semitones / 12.0)
    speed = rate / r
    y = x
    if abs(speed - 1.0) > 1e-6:
        writer = ArrayWriter(1)
        wsola(1, speed=speed).run(ArrayReader(x[None, :].astype(np.float32)), writer)
        y = writer.data[0]
    if abs(r - 1.0) > 1e-6:
        y = soxr.resample(y, sample_rate * r, sample_rate)
    return np.ascontiguousarray(y, dtype=np.float32)


def fit_background(x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random `n`-sample crop of `x` (looped when shorter); returns (clip, start offset)."""
    if x.size == 0:
        raise ValueError("background file has no samples")
    if x.size < n:
        x = np.tile(x, -(-n // x.size))
        return x[:n].copy(), 0
    start = int(rng.integers(0, x.size - n + 1))
    return x[start : start + n].copy(), start


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def label_of(rel_path: str) -> str:
    """The event class: the first folder of the foreground's relative path."""
    parts = rel_path.split("/")
    if len(parts) < 2:
        raise ValueError(f"foreground file {rel_path!r} is not in a class folder (expected LABEL/file.wav)")
    return parts[0]


def description_of(label: str) -> str:
    return label.replace("_", " ").replace("-", " ").strip()


# --------------------------------------------------------------------------- one pair


@dataclass
class Sources:
    """Sorted listings of the two trees and a small decode cache (per worker)."""

    settings: SynthSettings
    foreground: list[str]
    background: list[str]
    labels: list[str]
    _cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @classmethod
    def scan(cls, settings: SynthSettings) -> Sources:
        fg = SourceTree(settings.foreground).list_audio()
        bg = SourceTree(settings.background).list_audio()
        if not fg:
            raise ValueError(f"no audio files under the foreground {settings.foreground!r}")
        if not bg:
            raise ValueError(f"no audio files under the background {settings.background!r}")
        labels = sorted({label_of(p) for p in fg})
        return cls(settings, fg, bg, labels)

    def audio(self, which: str, rel: str) -> np.ndarray:
        key = (which, rel)
        if key not in self._cache:
            tree = SourceTree(self.settings.foreground if which == "fg" else self.settings.background)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = load_mono(tree.read(rel), self.settings.sample_rate)
        return self._cache[key]


def synth_pair(
    index: int,
    sources: Sources,
    energy: EnergyFilter,
    semantic: SemanticFilter | None = None,
    voice: VoiceActivityFilter | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Build pair `index`: (background, mixture, placed event, parameters), each clip (N,) float32."""
    s = sources.settings
    n, sr = s.clip_samples, s.sample_rate
    rng = np.random.default_rng([s.seed, index])
    rejected: list[str] = []
    for _attempt in range(MAX_ATTEMPTS):
        label = sources.labels[int(rng.integers(len(sources.labels)))]
        files = [p for p in sources.foreground if label_of(p) == label]
        fg_rel = files[int(rng.integers(len(files)))]
        bg_rel = sources.background[int(rng.integers(len(sources.background)))]
        semitones = float(rng.uniform(*s.pitch_semitones))
        rate = float(rng.uniform(*s.stretch_rate))
        snr_db = float(rng.uniform(*s.snr_db))
        event = pitch_and_stretch(sources.audio("fg", fg_rel), sr, semitones, rate)
        event = event[: round(s.max_event_s * sr)]
        onset = int(rng.integers(0, max(1, n - event.size + 1)))
        background, bg_offset = fit_background(sources.audio("bg", bg_rel), n, rng)
        if not energy.keep(event):
            rejected.append(f"{fg_rel}: silent")
            continue
        if voice is not None and label in s.speech_labels:
            kept, ratio = voice.keep(event, sr)
            if not kept:
                rejected.append(f"{fg_rel}: {voice.name} {ratio:.2f} of its length")
                continue
        if semantic is not None:
            score = semantic.score(event, sr, description_of(label))
            if score < semantic.min_score:
                rejected.append(f"{fg_rel}: {semantic.name} score {score:.3f}")
                continue
        span = slice(onset, onset + event.size)
        bg_power = power(background[span])
        if bg_power <= 1e-12:
            # A silent background span makes any gain an infinite SNR; use the clip's power instead.
            bg_power = max(power(background), 1e-8)
        gain = float(np.sqrt(bg_power * 10 ** (snr_db / 10) / power(event)))
        placed = np.zeros(n, dtype=np.float32)
        placed[span] = event * gain
        mixture = background + placed
        # One common scale keeps mixture == background + event and the peak under full scale.
        peak = float(max(np.abs(mixture).max(), np.abs(background).max(), np.abs(placed).max()))
        scale = 0.95 / peak if peak > 0.95 else 1.0
        params = {
            "index": index,
            "label": label,
            "description": description_of(label),
            "foreground": fg_rel,
            "background": bg_rel,
            "background_offset_samples": bg_offset,
            "onset_samples": onset,
            "onset_s": onset / sr,
            "event_samples": int(event.size),
            "snr_db": snr_db,
            "pitch_semitones": semitones,
            "stretch_rate": rate,
            "gain": gain * scale,
            "scale": scale,
            "rejected": rejected,
        }
        return background * scale, mixture * scale, placed * scale, params
    raise ValueError(f"pair {index}: {MAX_ATTEMPTS} events rejected in a row ({rejected[-3:]}); check the sources")


def build_shard(shard: int, settings: SynthSettings, sources: Sources | None = None) -> bytes:
    """The bytes of shard `shard` (pairs [shard*S, min((shard+1)*S, pairs)))."""
    sources = sources or Sources.scan(settings)
    energy = EnergyFilter(settings.min_event_dbfs)
    semantic = make_semantic_filter(settings.clap_weights, min_score=settings.clap_min_score)
    voice = VoiceActivityFilter(settings.min_speech_ratio)
    first = shard * settings.shard_size
    last = min(first + settings.shard_size, settings.pairs)
    bgs, mixes, events, params = [], [], [], []
    for i in range(first, last):
        bg, mix, ev, p = synth_pair(i, sources, energy, semantic, voice)
        bgs.append(bg)
        mixes.append(mix)
        events.append(ev)
        params.append(p)
    header = {"shard": shard, "sample_rate": settings.sample_rate, "settings_sha256": settings_digest(settings)}
    return encode_shard(
        background=np.stack(bgs), mixture=np.stack(mixes), event=np.stack(events), pairs=params, header=header
    )


def settings_digest(settings: SynthSettings) -> str:
    return hashlib.sha256(json.dumps(settings.to_json(), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- the Ray Data job


class _ShardWriter:
    """Ray Data callable: builds and stores one shard per row; keeps the source listing per worker."""

    def __init__(self, settings_json: dict[str, Any], out: str, endpoint_url: str | None) -> None:
        self.settings = SynthSettings.from_json(settings_json)
        self.sources = Sources.scan(self.settings)
        self.storage = open_storage(out, endpoint_url=endpoint_url)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        shard = int(row["shard"])
        start = time.perf_counter()
        data = build_shard(shard, self.settings, self.sources)
        info = self.storage.put(shard_key(shard), data)
        pairs = min(self.settings.shard_size, self.settings.pairs - shard * self.settings.shard_size)
        return {"shard": shard, "pairs": pairs, "bytes": info.size_bytes, "seconds": time.perf_counter() - start}


def run_synth(
    settings: SynthSettings,
    out: str,
    *,
    num_workers: int = 2,
    endpoint_url: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Synthesise the dataset into `out` on the current Ray cluster (started locally if none).

    Returns the manifest: shards, pairs, examples, wall time and pairs/s of this run.
    """
    import ray
    from tqdm import tqdm

    from workers.local_ray import init_ray

    if not 1 <= num_workers <= 1024:
        raise ValueError(f"num_workers must be in [1, 1024], got {num_workers}")
    storage = open_storage(out, endpoint_url=endpoint_url)
    wanted = json.dumps(settings.to_json(), sort_keys=True, indent=2).encode()
    if storage.exists(SETTINGS_KEY):
        stored = SynthSettings.from_json(json.loads(storage.get(SETTINGS_KEY)))
        if stored != settings:
            raise ValueError(
                f"{out} holds a dataset made with other settings ({SETTINGS_KEY}); use a new --out or the same "
                f"settings to resume. stored={stored.to_json()} requested={settings.to_json()}"
            )
    else:
        storage.put(SETTINGS_KEY, wanted)
    Sources.scan(settings)  # fail fast on empty or missing sources, before any worker starts
    make_semantic_filter(settings.clap_weights, min_score=settings.clap_min_score)  # logs a skip once

    todo = [k for k in range(settings.num_shards) if not storage.exists(shard_key(k))]
    done_before = settings.num_shards - len(todo)
    if done_before:
        log.info("resuming: %d of %d shards already stored", done_before, settings.num_shards)
    init_ray()
    start = time.perf_counter()
    made = 0
    if todo:
        items = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        # Ray Data runs a callable class on an actor pool; `Dataset.map`'s annotation names only functions.
        ds = items.map(
            _ShardWriter,  # type: ignore[arg-type]
            fn_constructor_args=(settings.to_json(), out, endpoint_url),
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=1,
        )
        bar = tqdm(total=settings.pairs, initial=done_before * settings.shard_size, unit="pair", disable=not progress)
        for row in ds.iter_rows():
            made += int(row["pairs"])
            bar.update(int(row["pairs"]))
        bar.close()
    wall_s = time.perf_counter() - start
    manifest = {
        "settings_sha256": settings_digest(settings),
        "shards": [shard_key(k) for k in range(settings.num_shards)],
        "pairs": settings.pairs,
        "examples": 4 * settings.pairs,
        "pairs_this_run": made,
        "wall_s": wall_s,
        "pairs_per_s": made / wall_s if made and wall_s > 0 else None,
        "num_workers": num_workers,
    }
    storage.put(MANIFEST_KEY, json.dumps(manifest, indent=2).encode())
    return manifest
