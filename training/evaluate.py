"""Held-out evaluation of the embedded `small` model (`training.recipes.small`'s weights).

    audio-omni-train evaluate [--weights model/data/small/model.safetensors] [--pairs 20] [--per-class 4]

prints one JSON object (its last line).

Held-out data: sounds generated with another seed (`make_sounds.py` seed 1, so no training file is
reused) and edit pairs synthesised from them with another synthesis seed (1). Reported:

* remove (mixture -> background) and extract (mixture -> event): log-spectral distance (dB, lower
  is better) and SI-SDR (dB, higher is better) against the target of (a) the model's raw decoded
  audio (no peak normalisation), (b) the same output applied as a mask to the source (the job option
  `keep_source`, `model.postprocess.source_mask`), next to the trivial baseline output = input.
  A generated waveform does not share the target's phase, so (a) cannot score on SI-SDR; (b) can.
  And the event contrast of (a): how much louder it is inside the event's frames than outside
  (`*_contrast_model`, next to the target's own, `*_contrast_target`): whether the model knows
  where the event is (remove: the target's is about 0 dB; extract: tens of dB).
* text-to-audio: `--clips-per-class` clips per class prompt, labelled by a nearest-centroid
  classifier on log-mel statistics fitted on the held-out real samples of the same classes;
  accuracy against chance (1 / number of classes). The mel bands stop at the model's output band
  (`config.output_band_hz`: 11.025 kHz for `small`) or 16 kHz, so the classifier compares what the
  model can produce. The same classifier on the real samples passed through the model's codec alone
  (encode, decode: `classifier_accuracy_on_codec`) is the most any text-to-audio model behind that
  codec can score. Every figure judged by a classifier comes twice: by the one above (no suffix),
  where every band-frame counts, and by the same method on features that raise everything more
  than `AUDIBLE_RANGE_DB` (60 dB) below a clip's loudest band-frame to that floor (`_audible`). The
  first reads the `small` codec's decoder flicker 60-100 dB down (between digital silence and a
  faint floor, in bands a tone never reaches) as the std of a decaying chord, and calls every
  codec round trip of a real tone a chord (0.75 on the codec); the second scores the round trip
  1.00 and unseen real samples as the first does (docs/model.md).
* understanding (the trained thinker, `training.recipes.thinker`), on `--scenes` held-out scenes
  (sounds of seed 1, synthesis seed 2, a quarter of them background only) through the real
  understand path (`MLLMEncoder.understand`, greedy): "What do you hear?" names the scene's class
  (`understanding_class_accuracy`, scenes with an event; chance 0.20), names a class that is not
  there (`understanding_false_class_rate`, every scene), background and yes/no answers, refusals
  of out-of-scope questions never trained on; and the describe -> generate chain: the thinker's
  answer to "Describe the main sound in a few words." becomes a text-to-audio prompt (the job's
  path: `generation_prompt`, the thinker's rows, the sampler at `--describe-cfg-scale`), and the same
  nearest-centroid classifiers say whether the clip is of the scene's class (`describe_generate_accuracy`,
  `describe_generate_accuracy_audible`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.recipes.small import CLASSES, REPO, make_sound_folder, prompt_of, synth_pairs

if TYPE_CHECKING:
    import torch

    from model.mllm import MLLMEncoder

DEFAULT_WEIGHTS = REPO / "model" / "data" / "small" / "model.safetensors"

SR = 44100
LSD_FLOOR = 1e-8  # power floor (-80 dB re full scale) so silent frames compare finitely
N_FFT, HOP = 2048, 512
N_MELS = 40
ONLY = ("all", "understanding")
# The second classifier's features ignore what lies more than this far below a clip's loudest
# band-frame: in the first, the decoder's flicker 60-100 dB down (between digital silence and a
# faint floor, in bands the sound never reaches) outweighs the sound itself (docs/model.md).
AUDIBLE_RANGE_DB = 60.0
CLASSIFIERS: dict[str, float | None] = {"": None, "_audible": AUDIBLE_RANGE_DB}  # figure suffix -> floor_db


def lsd_db(x: np.ndarray, ref: np.ndarray) -> float:
    """Log-spectral distance (dB): per-frame RMS over frequency of the log-power difference, mean over frames."""
    px, pr = _power(x), _power(ref)
    d = 10 * np.log10(px + LSD_FLOOR) - 10 * np.log10(pr + LSD_FLOOR)  # (F, T)
    return float(np.mean(np.sqrt(np.mean(d**2, axis=0))))


def event_contrast_db(x: np.ndarray, event: np.ndarray, frame: int = 2048) -> float:
    """How much louder `x` is inside the event's frames than outside them (dB, frame-energy means):
    whether an edit's output knows *where* the event is. The event's frames are those within 30 dB
    of its loudest; nan when the event fills every frame or none."""

    def frame_db(y: np.ndarray) -> np.ndarray:
        n = len(y) // frame
        return 10 * np.log10((y[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + LSD_FLOOR)

    ev = frame_db(event)
    inside = ev > ev.max() - 30
    if inside.all() or not inside.any():
        return float("nan")
    out = frame_db(x)
    return float(out[inside].mean() - out[~inside].mean())


def si_sdr_db(x: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio (dB) of `x` against `ref` (both zero-meaned)."""
    x, ref = x - x.mean(), ref - ref.mean()
    alpha = np.dot(x, ref) / (np.dot(ref, ref) + 1e-12)
    target = alpha * ref
    return float(10 * np.log10((np.sum(target**2) + 1e-12) / (np.sum((x - target) ** 2) + 1e-12)))


def _power(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (N_FFT // 2, N_FFT // 2)), N_FFT)[::HOP]
    return (np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2).T  # (F, T)


def mel_matrix(fmax: float, sr: int = SR) -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular mel filters from 30 Hz to `fmax`."""

    def hz_to_mel(f: float | np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    mels = np.linspace(hz_to_mel(30), hz_to_mel(fmax), N_MELS + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    bins = np.fft.rfftfreq(N_FFT, 1 / sr)
    fb = np.zeros((N_MELS, bins.size))
    for m in range(N_MELS):
        lo, c, hi = hz[m], hz[m + 1], hz[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return fb


def logmel_stats(x: np.ndarray, mel: np.ndarray, floor_db: float | None = None) -> np.ndarray:
    """Mean and std over the active frames (within 30 dB of the loudest) of a 40-band log-mel, plus
    the mean frame-to-frame flux: an 81-dim vector. With `floor_db`, every band-frame more than that
    far below the clip's loudest one is raised to that level first (`AUDIBLE_RANGE_DB`)."""
    lm = 10 * np.log10(mel @ _power(x) + 1e-10)  # (M, T)
    if floor_db is not None:
        lm = np.maximum(lm, lm.max() - floor_db)
    energy = lm.max(axis=0)
    active = lm[:, energy > energy.max() - 30]
    flux = np.abs(np.diff(active, axis=1)).mean() if active.shape[1] > 1 else 0.0
    return np.concatenate([active.mean(axis=1), active.std(axis=1), [flux]])


class NearestCentroid:
    """Standardised features, one centroid per class, Euclidean distance."""

    mu: np.ndarray
    sd: np.ndarray
    classes: list[str]
    centroids: np.ndarray

    def __init__(self, mel: np.ndarray, floor_db: float | None = None) -> None:
        self.mel, self.floor_db = mel, floor_db  # a clip's features: `logmel_stats(clip, mel, floor_db)`

    def features(self, clips: list[np.ndarray]) -> np.ndarray:
        return np.stack([logmel_stats(x, self.mel, self.floor_db) for x in clips])

    def fit(self, clips: list[np.ndarray], labels: list[str]) -> NearestCentroid:
        feats = self.features(clips)
        self.mu, self.sd = feats.mean(axis=0), feats.std(axis=0) + 1e-6
        z = (feats - self.mu) / self.sd
        self.classes = sorted(set(labels))
        self.centroids = np.stack([z[[lab == c for lab in labels]].mean(axis=0) for c in self.classes])
        return self

    def predict(self, clips: list[np.ndarray]) -> list[str]:
        z = (self.features(clips) - self.mu) / self.sd
        d = ((z[:, None, :] - self.centroids[None]) ** 2).sum(axis=-1)
        return [self.classes[i] for i in d.argmin(axis=1)]

    def accuracy(self, clips: list[np.ndarray], labels: list[str]) -> float:
        """The fraction of `clips` labelled as `labels` says."""
        return match_rate(self.predict(clips), labels)


def match_rate(predicted: list[str], labels: list[str]) -> float:
    """The fraction of `predicted` labels equal to `labels`."""
    return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))


@dataclass(frozen=True)
class EvalSettings:
    """What `evaluate_small` measures (validated here)."""

    weights: Path = DEFAULT_WEIGHTS
    pairs: int = 20  # held-out edit pairs
    per_class: int = 4  # held-out real samples per class
    clips_per_class: int = 4  # text-to-audio clips per class prompt
    steps: int = 16
    cfg_scale: float = 7.0
    threads: int = 2
    scenes: int = 40  # held-out understanding scenes with an event (plus a quarter as many without)
    describe_cfg_scale: float = 7.0  # the describe -> generate chain's CFG (text-to-audio's best, CFG 7)
    only: str = "all"  # "all", or "understanding" (skip the edit and text-to-audio figures)

    def __post_init__(self) -> None:
        if self.only not in ONLY:
            raise ValueError(f"only must be one of {list(ONLY)}, got {self.only!r}")
        for name in ("pairs", "per_class", "clips_per_class", "steps", "threads", "scenes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value}")
        if not Path(self.weights).is_file():
            raise FileNotFoundError(f"no weights file at {self.weights}")


@dataclass
class HeldOut:
    """Held-out data: edit pairs, their parameters, and the classifiers fitted on real class samples
    (keyed by `CLASSIFIERS`' figure suffixes), each one's accuracy on those samples and after the
    codec's round trip."""

    clips: dict[str, np.ndarray]
    params: list[dict[str, Any]]
    classifiers: dict[str, NearestCentroid]
    real_accuracy: dict[str, float]
    codec_accuracy: dict[str, float]


def held_out_data(settings: EvalSettings, mel: np.ndarray, round_trip: Callable[[np.ndarray], np.ndarray]) -> HeldOut:
    """Sounds of seed 1 (no training file reused), pairs of synthesis seed 1, classifiers on the sounds,
    and their accuracy on the same sounds after `round_trip` (the codec's encode and decode)."""
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "heldout"
        make_sound_folder(folder, settings.per_class, seed=1)
        clips, params = synth_pairs(folder, settings.pairs, seed=1, workers=settings.threads)
        real, labels = [], []
        for c in CLASSES:
            for f in sorted((folder / "foreground" / c).glob("*.wav")):
                x, sr = sf.read(f, dtype="float32")
                real.append(soxr.resample(x, sr, SR).astype(np.float32))
                labels.append(c)
    coded = [round_trip(x) for x in real]
    classifiers = {k: NearestCentroid(mel, floor).fit(real, labels) for k, floor in CLASSIFIERS.items()}
    return HeldOut(
        clips=clips,
        params=params,
        classifiers=classifiers,
        real_accuracy={k: clf.accuracy(real, labels) for k, clf in classifiers.items()},
        codec_accuracy={k: clf.accuracy(coded, labels) for k, clf in classifiers.items()},
    )


def evaluate_small(settings: EvalSettings) -> dict[str, Any]:
    """Every figure of the module docstring, as one JSON-able dict."""
    import torch

    from model.build import build_encoder, build_sampler
    from model.config import get_preset
    from model.mllm import MLLMPrompt
    from model.requests import GenerationRequest

    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    cfg = get_preset("small")
    encoder = build_encoder(cfg, weights=settings.weights)
    sampler = build_sampler(cfg, weights=settings.weights)
    texts = sorted({prompt_of(t, c) for t in ("edit_remove", "edit_extract", "text_to_audio") for c in CLASSES})
    rows = dict(zip(texts, encoder.encode([MLLMPrompt(text=t) for t in texts]), strict=True))

    def row(text: str) -> torch.Tensor:  # the thinker's rows of a chat-formatted prompt, computed once
        if text not in rows:
            rows[text] = encoder.encode([MLLMPrompt(text=text)])[0]
        return rows[text]

    window = cfg.mel.window_samples
    band_hz = cfg.output_band_hz
    mel = mel_matrix(min(16000.0, band_hz or 16000.0))

    def generate(text: str, source: np.ndarray | None, seed: int, cfg_scale: float | None = None) -> torch.Tensor:
        req = GenerationRequest(
            mllm_features=row(text),
            seed=seed,
            steps=settings.steps,
            cfg_scale=settings.cfg_scale if cfg_scale is None else cfg_scale,
            audio_window=None if source is None else torch.from_numpy(source[:window]),
        )
        out: torch.Tensor = sampler.generate([req])[0][:, :window]  # (C, N)
        return out

    def round_trip(x: np.ndarray) -> np.ndarray:  # mono -> the codec's encode and decode -> mono
        n = min(x.shape[-1], cfg.output_samples)
        decoded = sampler.decode(sampler.encode_audio(torch.from_numpy(x[None, :n])))
        return mono(decoded[0, :, :n])

    data = held_out_data(settings, mel, round_trip)
    result: dict[str, Any] = {
        "weights": str(settings.weights),
        "pairs": settings.pairs,
        "steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
    }
    if settings.only == "all":
        result.update(edit_and_t2a_figures(settings, data, generate, window=window, band_hz=band_hz))
    result.update(understanding_figures(settings, encoder, data.classifiers, generate))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def mono(audio: torch.Tensor) -> np.ndarray:
    """A generated (C, N) clip as one mono numpy channel."""
    return audio.mean(dim=0).numpy()


def edit_and_t2a_figures(
    settings: EvalSettings,
    data: HeldOut,
    generate: Callable[..., torch.Tensor],
    *,
    window: int,
    band_hz: float | None,
) -> dict[str, Any]:
    """Remove / extract figures on the held-out pairs and text-to-audio accuracy per class prompt."""
    import torch

    from model.postprocess import source_mask

    clips, params = data.clips, data.params
    edits: dict[str, dict[str, list[float]]] = {}
    for task, target_clip in (("edit_remove", "background"), ("edit_extract", "event")):
        m: dict[str, list[float]] = {
            f"{metric}_{kind}": [] for metric in ("lsd", "sisdr") for kind in ("model", "masked", "baseline")
        }
        m.update({"contrast_model": [], "contrast_target": []})
        for i in range(settings.pairs):
            src, tgt = clips["mixture"][i][:window], clips[target_clip][i][:window]
            raw = generate(prompt_of(task, params[i]["label"]), src, seed=100 + i)
            # keep_source: the raw output as a time-frequency mask on the source (model.postprocess)
            masked = mono(source_mask(raw, torch.from_numpy(src), band_hz=band_hz, sample_rate=SR))
            raw_mono = mono(raw)
            for kind, out in (("model", raw_mono), ("masked", masked), ("baseline", src)):
                m[f"lsd_{kind}"].append(lsd_db(out, tgt))
                m[f"sisdr_{kind}"].append(si_sdr_db(out, tgt))
            event = clips["event"][i][:window]
            for kind, out in (("model", raw_mono), ("target", tgt)):  # localisation of the raw output
                m[f"contrast_{kind}"].append(event_contrast_db(out, event))
        edits[task] = m

    gen_clips, gen_labels = [], []
    for ci, c in enumerate(CLASSES):
        for k in range(settings.clips_per_class):
            gen_clips.append(mono(generate(prompt_of("text_to_audio", c), None, seed=1000 + 10 * ci + k)))
            gen_labels.append(c)
    t2a: dict[str, Any] = {}
    for suffix, clf in data.classifiers.items():
        pred = clf.predict(gen_clips)
        t2a[f"t2a_accuracy{suffix}"] = round(match_rate(pred, gen_labels), 3)
        t2a[f"t2a_predictions{suffix}"] = {
            c: [p for p, g in zip(pred, gen_labels, strict=True) if g == c] for c in CLASSES
        }
        t2a[f"classifier_accuracy_on_real{suffix}"] = round(data.real_accuracy[suffix], 3)
        t2a[f"classifier_accuracy_on_codec{suffix}"] = round(data.codec_accuracy[suffix], 3)

    result: dict[str, Any] = {}
    for task, m in edits.items():
        short = task.removeprefix("edit_")
        for name, values in m.items():
            result[f"{short}_{name}"] = round(float(np.nanmean(values)), 2)
        for kind in ("model", "masked"):
            for metric, better in (("lsd", np.less), ("sisdr", np.greater)):
                wins = better(np.array(m[f"{metric}_{kind}"]), np.array(m[f"{metric}_baseline"]))
                result[f"{short}_{metric}_{kind}_better_frac"] = round(float(np.mean(wins)), 2)
    result.update(t2a)
    result.update({"t2a_chance": round(1 / len(CLASSES), 3), "t2a_clips": len(gen_labels)})
    return result


def understanding_figures(
    settings: EvalSettings,
    encoder: MLLMEncoder,
    classifiers: dict[str, NearestCentroid],
    generate: Callable[..., torch.Tensor],
) -> dict[str, Any]:
    """The trained thinker's held-out figures and the describe -> generate chain (module docstring),
    the chain judged by each of `classifiers` (figure suffix -> classifier)."""
    from model.prompts import generation_prompt
    from model.tasks import Task
    from training.recipes import thinker, thinker_data

    with tempfile.TemporaryDirectory() as tmp:
        audio, scenes = thinker.held_out_scenes(Path(tmp) / "scenes", settings.scenes, settings.threads)
    figures = thinker.understanding_figures(encoder, audio, scenes)
    question = thinker_data.DESCRIBE_QUESTIONS[0]
    clips, truth, answers = [], [], []
    for i, (x, scene) in enumerate(zip(audio, scenes, strict=True)):
        if scene.label is None:
            continue
        (answer,) = thinker.ask(encoder, question, [x])
        prompt = answer.strip() or "."  # an empty answer still makes a (meaningless) prompt
        out = generate(
            generation_prompt(Task.TEXT_TO_AUDIO, prompt=prompt), None, 2000 + i, settings.describe_cfg_scale
        )
        clips.append(mono(out))
        truth.append(scene.label)
        answers.append(answer)
    known = {thinker_data.CLASS_TEXT[c] for c in CLASSES}
    result = {f"understanding_{k}": v for k, v in figures.items()}
    result.update(
        {
            "describe_question": question,
            "describe_cfg_scale": settings.describe_cfg_scale,
            "describe_names_true_class": round(match_rate(answers, [thinker_data.CLASS_TEXT[t] for t in truth]), 3),
            "describe_known_prompt_rate": round(float(np.mean([a in known for a in answers])), 3),
            "describe_generate_clips": len(truth),
        }
    )
    for suffix, clf in classifiers.items():
        result[f"describe_generate_accuracy{suffix}"] = round(clf.accuracy(clips, truth), 3)
    return result
