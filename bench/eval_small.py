"""Measure the embedded `small` model on held-out synthetic data; the last line printed is one JSON object.

    python bench/eval_small.py [--weights model/data/small/model.safetensors] [--pairs 20] [--per-class 4]

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
  model can produce.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_small import CLASSES, make_sound_folder, prompt_of, synth_pairs  # noqa: E402

SR = 44100
LSD_FLOOR = 1e-8  # power floor (-80 dB re full scale) so silent frames compare finitely
N_FFT, HOP = 2048, 512
N_MELS = 40


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

    def hz_to_mel(f):
        return 2595 * np.log10(1 + f / 700)

    mels = np.linspace(hz_to_mel(30), hz_to_mel(fmax), N_MELS + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    bins = np.fft.rfftfreq(N_FFT, 1 / sr)
    fb = np.zeros((N_MELS, bins.size))
    for m in range(N_MELS):
        lo, c, hi = hz[m], hz[m + 1], hz[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return fb


def logmel_stats(x: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """Mean and std over the active frames (within 30 dB of the loudest) of a 40-band log-mel, plus
    the mean frame-to-frame flux: an 81-dim vector."""
    lm = 10 * np.log10(mel @ _power(x) + 1e-10)  # (M, T)
    energy = lm.max(axis=0)
    active = lm[:, energy > energy.max() - 30]
    flux = np.abs(np.diff(active, axis=1)).mean() if active.shape[1] > 1 else 0.0
    return np.concatenate([active.mean(axis=1), active.std(axis=1), [flux]])


class NearestCentroid:
    """Standardised features, one centroid per class, Euclidean distance."""

    def fit(self, feats: np.ndarray, labels: list[str]) -> NearestCentroid:
        self.mu, self.sd = feats.mean(axis=0), feats.std(axis=0) + 1e-6
        z = (feats - self.mu) / self.sd
        self.classes = sorted(set(labels))
        self.centroids = np.stack([z[[lab == c for lab in labels]].mean(axis=0) for c in self.classes])
        return self

    def predict(self, feats: np.ndarray) -> list[str]:
        z = (feats - self.mu) / self.sd
        d = ((z[:, None, :] - self.centroids[None]) ** 2).sum(axis=-1)
        return [self.classes[i] for i in d.argmin(axis=1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "model/data/small/model.safetensors"))
    p.add_argument("--pairs", type=int, default=20, help="held-out edit pairs")
    p.add_argument("--per-class", type=int, default=4, help="held-out real samples per class")
    p.add_argument("--clips-per-class", type=int, default=4, help="text-to-audio clips per class prompt")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    for name in ("pairs", "per_class", "clips_per_class", "steps", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    import soundfile as sf
    import torch

    from model.build import build_encoder, build_sampler
    from model.config import get_preset
    from model.mllm import MLLMPrompt
    from model.postprocess import source_mask
    from model.requests import GenerationRequest

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = get_preset("small")
    encoder = build_encoder(cfg, weights=args.weights)
    sampler = build_sampler(cfg, weights=args.weights)
    texts = sorted({prompt_of(t, c) for t in ("edit_remove", "edit_extract", "text_to_audio") for c in CLASSES})
    rows = dict(zip(texts, encoder.encode([MLLMPrompt(text=t) for t in texts]), strict=True))
    window = cfg.mel.window_samples
    band_hz = cfg.output_band_hz
    mel = mel_matrix(min(16000.0, band_hz or 16000.0))

    def generate(text: str, source: np.ndarray | None, seed: int) -> np.ndarray:
        req = GenerationRequest(
            mllm_features=rows[text],
            seed=seed,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            audio_window=None if source is None else torch.from_numpy(source[:window]),
        )
        return sampler.generate([req])[0][:, :window]  # (C, N)

    def mono(audio: torch.Tensor) -> np.ndarray:
        return audio.mean(dim=0).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "heldout"
        make_sound_folder(folder, args.per_class, seed=1)
        clips, params = synth_pairs(folder, args.pairs, seed=1, workers=args.threads)
        real_feats, real_labels = [], []
        for c in CLASSES:
            for f in sorted((folder / "foreground" / c).glob("*.wav")):
                x, sr = sf.read(f, dtype="float32")
                import soxr

                real_feats.append(logmel_stats(soxr.resample(x, sr, SR), mel))
                real_labels.append(c)
    clf = NearestCentroid().fit(np.stack(real_feats), real_labels)
    real_acc = float(np.mean([a == b for a, b in zip(clf.predict(np.stack(real_feats)), real_labels, strict=True)]))

    edits: dict[str, dict[str, list[float]]] = {}
    for task, target_clip in (("edit_remove", "background"), ("edit_extract", "event")):
        m = {f"{metric}_{kind}": [] for metric in ("lsd", "sisdr") for kind in ("model", "masked", "baseline")}
        m.update({"contrast_model": [], "contrast_target": []})
        for i in range(args.pairs):
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

    gen_feats, gen_labels = [], []
    for ci, c in enumerate(CLASSES):
        for k in range(args.clips_per_class):
            out = generate(prompt_of("text_to_audio", c), None, seed=1000 + 10 * ci + k)
            gen_feats.append(logmel_stats(mono(out), mel))
            gen_labels.append(c)
    pred = clf.predict(np.stack(gen_feats))
    t2a_acc = float(np.mean([a == b for a, b in zip(pred, gen_labels, strict=True)]))
    confusion = {c: [p for p, g in zip(pred, gen_labels, strict=True) if g == c] for c in CLASSES}

    result = {
        "weights": str(args.weights),
        "pairs": args.pairs,
        "steps": args.steps,
        "cfg_scale": args.cfg_scale,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    for task, m in edits.items():
        short = task.removeprefix("edit_")
        for k, v in m.items():
            result[f"{short}_{k}"] = round(float(np.nanmean(v)), 2)
        for kind in ("model", "masked"):
            for metric, better in (("lsd", np.less), ("sisdr", np.greater)):
                wins = better(np.array(m[f"{metric}_{kind}"]), np.array(m[f"{metric}_baseline"]))
                result[f"{short}_{metric}_{kind}_better_frac"] = round(float(np.mean(wins)), 2)
    result.update(
        {
            "t2a_accuracy": round(t2a_acc, 3),
            "t2a_chance": round(1 / len(CLASSES), 3),
            "t2a_clips": len(gen_labels),
            "classifier_accuracy_on_real": round(real_acc, 3),
            "t2a_predictions": confusion,
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
