"""Recompute reference test vectors with our model parts and report the error of each tensor.

Inputs are the vectors (a name -> tensor dict) and their `case` metadata (run parameters: cfg
scales, texts, seeds, step counts, which tensor holds which input). Nothing is read from tensor
names beyond the fixed schema of the vector sets, so another set with other sizes, texts, scales
and step counts runs unchanged. No I/O here: the CLI reads the files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from model.config import MEL_ID, OMNI_ID, SPEECH_ID, SYNC_ID, AudioOmniConfig
from model.mllm import MLLMEncoder, select_hidden
from model.parts import SamplerPart
from model.sampler import euler_sample, reference_noise
from model.vae import decode, encode_moments, encode_raw

# Max absolute error allowed per tensor group, from the vectors' README ("suggested pass thresholds
# for a float32 CPU reimplementation"); the first matching pattern wins.
TOLERANCES: tuple[tuple[str, float], ...] = (
    (r"^dit\.out\.", 5e-4),  # cfg 1 calls are checked at 1e-4 below
    (r"^dit\.dbg\.", 1e-4),
    (r"^vae\.dec\.", 2e-3),
    (r"^vae\.", 1e-4),
    (r"^mel\.", 1e-4),
    (r"^speech\.", 1e-4),
    (r"^omni\.", 1e-4),
    (r"^samp\.cond\.", 1e-4),
    (r"^samp\.noise", 0.0),
    (r"^samp\.step\d+\.t$", 0.0),
    (r"^samp\.step\d+\.v_cfg$", 5e-4),
    (r"^samp\.step\d+\.x$", 1e-3),
    (r"^samp\.out\.latent$", 1e-3),
    (r"^samp\.out\.audio$", 1e-2),
)


def tolerance(name: str, *, cfg_scale: float | None = None) -> float:
    if cfg_scale == 1.0 and name.startswith("dit.out."):
        return 1e-4
    for pattern, tol in TOLERANCES:
        if re.search(pattern, name):
            return tol
    raise ValueError(f"no tolerance known for tensor {name!r}")


@dataclass
class Check:
    name: str
    max_abs_err: float
    tolerance: float
    shape: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.name,
            "max_abs_err": self.max_abs_err,
            "tolerance": self.tolerance,
            "shape": list(self.shape),
            "ok": self.ok,
        }


def compare(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> Check:
    """The max absolute error of `got` against the reference `want` (shapes must agree)."""
    got = got.detach().float().cpu()
    want = want.float()
    if got.shape != want.shape:
        raise ValueError(f"{name}: computed shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    err = float((got - want).abs().max()) if want.numel() else 0.0
    return Check(name, err, tol, tuple(want.shape))


class Verifier:
    """Runs every reference computation whose inputs are present in `vectors`."""

    def __init__(
        self,
        config: AudioOmniConfig,
        sampler: SamplerPart,
        encoder: MLLMEncoder | None,
        vectors: Mapping[str, torch.Tensor],
        case: Mapping[str, Any],
    ) -> None:
        self.config = config
        self.sampler = sampler
        self.encoder = encoder
        self.v = vectors
        self.case = case

    def _has(self, *names: str) -> bool:
        return all(n in self.v for n in names)

    def check(self, name: str, got: torch.Tensor, *, cfg_scale: float | None = None) -> Check:
        return compare(name, got, self.v[name], tolerance(name, cfg_scale=cfg_scale))

    @torch.no_grad()
    def run(self) -> Iterator[Check]:
        sections: list[Callable[[], Iterator[Check]]] = [
            self.dit,
            self.vae,
            self.mel,
            self.speech,
            self.omni,
            self.sampling,
        ]
        for section in sections:
            yield from section()

    # --------------------------------------------------------------------------- (a) DiT

    def dit(self) -> Iterator[Check]:
        names = ("dit.in.x", "dit.in.t", "dit.in.cross_cond", "dit.in.cross_mask", "dit.in.global_cond")
        if not self._has(*names):
            return
        dit = self.sampler.dit
        x, t, c, m, g = (self.v[n] for n in names)
        m = m != 0
        for call in self.case.get("dit", {}).get("calls", []):
            v = dit.guided_velocity(x, t, c, m, g, float(call["cfg_scale"]), float(call.get("scale_phi", 0.0)))
            yield self.check(call["name"], v, cfg_scale=float(call["cfg_scale"]))
        debug = {
            "dit.dbg.timestep_embed": lambda: dit.embed_timestep(t),
            "dit.dbg.cond_embed": lambda: dit.embed_cond(c),
            "dit.dbg.global_embed": lambda: dit.embed_global(g),
        }
        for name, fn in debug.items():
            if name in self.v:
                yield self.check(name, fn())

    # --------------------------------------------------------------------------- (b) VAE

    def vae(self) -> Iterator[Check]:
        if "vae.in.wav" not in self.v:
            return
        vae = self.sampler.vae
        wav = self.v["vae.in.wav"]
        raw = encode_raw(vae, wav)
        mean, std = encode_moments(vae, wav)
        half = raw.shape[1] // 2
        computed = {
            "vae.enc.pre_bottleneck": raw,
            "vae.enc.mean": mean,
            "vae.enc.scale_raw": raw[:, half:],
            "vae.enc.std": std,
        }
        for name, got in computed.items():
            if name in self.v:
                yield self.check(name, got)
        eps_name = self.case.get("vae", {}).get("eps_name")
        if eps_name and eps_name in self.v:
            sampled = mean + std * self.v[eps_name]
            if "vae.enc.latent_sampled" in self.v:
                yield self.check("vae.enc.latent_sampled", sampled)
            if "vae.dec.from_sampled" in self.v:
                yield self.check("vae.dec.from_sampled", decode(vae, sampled))
        if "vae.dec.from_mean" in self.v:
            yield self.check("vae.dec.from_mean", decode(vae, mean))

    # --------------------------------------------------------------------------- (c) mel

    def _mel_items(self) -> list[torch.Tensor]:
        """The mel case's input waveforms, from its item descriptions ("<tensor> / <scale>", "zeros(N)")."""
        items = []
        for desc in self.case.get("mel", {}).get("items", []):
            desc = desc.strip()
            zeros = re.fullmatch(r"zeros\((\d+)\)", desc)
            if zeros:
                items.append(torch.zeros(int(zeros.group(1))))
                continue
            ref = re.fullmatch(r"(\S+)\s*/\s*([\d.]+)", desc)
            if not ref or ref.group(1) not in self.v:
                raise ValueError(f"cannot read mel item {desc!r}")
            items.append(self.v[ref.group(1)].float().reshape(-1) / float(ref.group(2)))
        return items

    def mel(self) -> Iterator[Check]:
        if "mel" not in self.case or "mel.in.wav0_pcm16" not in self.v:
            return
        mel = self.sampler.mel
        wav = torch.stack(self._mel_items())  # (B, N)
        logmel = mel.log_mel(wav)  # (B, M, F)
        if "mel.dbg.num_frames" in self.v:
            want = int(self.v["mel.dbg.num_frames"].reshape(-1)[0])
            yield Check("mel.dbg.num_frames", float(abs(logmel.shape[-1] - want)), 0.0, (1,))
            if logmel.shape[-1] != want:
                return  # every later mel tensor would differ in shape
        if "mel.dbg.logmel0_head64" in self.v:
            n = self.v["mel.dbg.logmel0_head64"].shape[-1]
            yield self.check("mel.dbg.logmel0_head64", logmel[:1, :, :n])
        if "mel.dbg.logmel0_tail64" in self.v:
            n = self.v["mel.dbg.logmel0_tail64"].shape[-1]
            yield self.check("mel.dbg.logmel0_tail64", logmel[:1, :, -n:])
        if "mel.dbg.logmel1_value" in self.v:
            # every value of item 1 equals the reference's single value
            want = self.v["mel.dbg.logmel1_value"].reshape(-1)[0]
            err = float((logmel[1] - want).abs().max())
            yield Check("mel.dbg.logmel1_value", err, tolerance("mel.dbg.logmel1_value"), (1,))
        tokens, mask = mel(wav)
        if "mel.out.tokens" in self.v:
            yield self.check("mel.out.tokens", tokens)
        if "mel.out.mask" in self.v:
            yield self.check("mel.out.mask", mask)
        tts_item = self.case["mel"].get("tts_item")
        if tts_item is not None and self._has("mel.tts.out.tokens", "mel.tts.mask_start_len"):
            start, length = (int(v) for v in self.v["mel.tts.mask_start_len"].reshape(-1))
            spans: list[tuple[int, int] | None] = [None] * wav.shape[0]
            spans[int(tts_item)] = (start, length)
            yield self.check("mel.tts.out.tokens", mel(wav, mask_spans=spans)[0])

    # --------------------------------------------------------------------------- (d) speech

    def speech(self) -> Iterator[Check]:
        texts = self.case.get("speech", {}).get("texts")
        if not texts or "speech.out.tokens" not in self.v:
            return
        sp = self.sampler.speech
        ids, is_none = sp.speech_token_ids(texts, self.sampler.vocab)
        if "speech.in.token_ids" in self.v:
            want = self.v["speech.in.token_ids"]
            width = max(ids.shape[1], want.shape[1])
            got_p = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=-1)
            want_p = torch.nn.functional.pad(want, (0, width - want.shape[1]), value=-1)
            err = float((got_p != want_p).sum())  # number of differing token ids
            yield Check("speech.in.token_ids", err, 0.0, tuple(want.shape))
        if "speech.dbg.text_embed" in self.v:
            yield self.check("speech.dbg.text_embed", sp.encode_text(ids))
        # The vectors come from one mixed batch: replay the reference's batch-dependent norm.
        tokens, mask = sp(ids, is_none, legacy_mixed_batch_norm=True)
        yield self.check("speech.out.tokens", tokens)
        if "speech.out.mask" in self.v:
            yield self.check("speech.out.mask", mask)

    # --------------------------------------------------------------------------- (f) omni

    def omni(self) -> Iterator[Check]:
        case = self.case.get("omni", {})
        if self.encoder is None or not self._has("omni.in.input_ids", "omni.in.attention_mask"):
            return
        ids, am = self.v["omni.in.input_ids"], self.v["omni.in.attention_mask"]
        hidden = self.encoder.hidden_states(ids, am).float()  # (B, S, D)
        keep = am.bool()[..., None]
        for key in ("hidden_name", "hidden_bf16_name"):
            name = case.get(key)
            if name and name in self.v:
                got = hidden.bfloat16().float() if key == "hidden_bf16_name" else hidden
                # only real (unmasked) rows are defined
                yield self.check(name, torch.where(keep, got, self.v[name]))
        proj = self.sampler.omni_proj
        feats = select_hidden(hidden, am, self.config.mllm.pad_length)
        normed, mask = proj.pad_and_norm(feats)
        if "omni.dbg.normed_bf16" in self.v:
            yield self.check("omni.dbg.normed_bf16", normed)
        tokens, mask = proj(feats)
        if "omni.out.tokens" in self.v:
            yield self.check("omni.out.tokens", tokens)
        if "omni.out.mask" in self.v:
            yield self.check("omni.out.mask", mask)
        bf16_name = case.get("hidden_bf16_name")
        if bf16_name in self.v and "omni.out.tokens_from_tensor_path" in self.v:
            rows = [self.v[bf16_name][i][am[i].bool()].bfloat16() for i in range(am.shape[0])]
            t_tokens, t_mask = proj(rows)
            yield self.check("omni.out.tokens_from_tensor_path", t_tokens)
            if "omni.out.mask_from_tensor_path" in self.v:
                yield self.check("omni.out.mask_from_tensor_path", t_mask)

    # --------------------------------------------------------------------------- (e) sampling

    def sampling(self) -> Iterator[Check]:
        case = self.case.get("sampling")
        if not case or self.encoder is None or "samp.out.latent" not in self.v:
            return
        sampler = self.sampler
        items = case["items"]
        omni_texts = self.case.get("omni", {}).get("texts", [])
        ids, am = self.v["omni.in.input_ids"], self.v["omni.in.attention_mask"]
        feats_all = select_hidden(self.encoder.hidden_states(ids, am), am, self.config.mllm.pad_length)
        mel_items = self._mel_items()
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        feats = [feats_all[omni_texts.index(it["omni_text"])] for it in items]
        outputs[OMNI_ID] = sampler.omni_proj(feats)
        sp_ids, is_none = sampler.speech.speech_token_ids([it["speech"] for it in items], sampler.vocab)
        outputs[SPEECH_ID] = sampler.speech(sp_ids, is_none, legacy_mixed_batch_norm=True)
        wav = []
        for it in items:
            m = re.search(r"mel item (\d+)", it["audio_input"])
            if not m:
                raise ValueError(f"cannot read sampling audio input {it['audio_input']!r}")
            wav.append(mel_items[int(m.group(1))])
        outputs[MEL_ID] = sampler.mel(torch.stack(wav))
        sync = []
        for it in items:
            src = it["sync_feature"]
            sync.append(
                self.v[src].float().reshape(sampler.sync.seq_in, -1)
                if src in self.v
                else sampler.sync.null_features(1)[0]
            )
        outputs[SYNC_ID] = sampler.sync(torch.stack(sync))
        cond = sampler.assemble(outputs)
        for name, got in (
            ("samp.cond.cross_attn_cond", cond.cross),
            ("samp.cond.cross_attn_mask", cond.cross_mask.float()),
            ("samp.cond.global_cond", cond.prefix),
        ):
            if name in self.v:
                yield self.check(name, got)
        latent_frames = int(case["sample_size"]) // self.config.vae.downsampling_ratio
        shape = (self.config.dit.io_channels, latent_frames)
        noise = reference_noise(int(case["seed"]), len(items), shape)
        noise_name = case.get("noise_name")
        if noise_name in self.v:
            yield compare(noise_name, noise, self.v[noise_name], 0.0)
        steps_seen: list[Check] = []

        def on_step(k: int, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> None:
            for name, got in ((f"samp.step{k}.t", t), (f"samp.step{k}.x", x), (f"samp.step{k}.v_cfg", v)):
                if name in self.v and not (k == 0 and name.endswith(".x")):
                    steps_seen.append(self.check(name, got))

        cfg_scale = float(case["cfg_scale"])
        phi = float(case.get("scale_phi", 0.0))

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return sampler.dit.guided_velocity(x, t, cond.cross, cond.cross_mask, cond.prefix, cfg_scale, phi)

        latent = euler_sample(velocity, noise, int(case["steps"]), on_step=on_step)
        yield from steps_seen
        yield self.check("samp.out.latent", latent)
        if "samp.out.audio" in self.v:
            yield self.check("samp.out.audio", sampler.decode(latent))
