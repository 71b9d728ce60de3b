"""Typed configuration of Audio-Omni, read from (and written back to) the released `Audio-Omni.json`.

The released file is a stable-audio-tools style nested dict. `AudioOmniConfig.from_dict` reads that
schema strictly (unknown conditioner types, unknown keys and unsupported options raise `ValueError`
naming the offending path) and flattens it into frozen dataclasses; `to_dict` writes the same schema
back. Presets live in `PRESETS`, looked up by name through `get_preset` / `load_config`.

No torch import here: the orchestrator reads configs without loading the model stack.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Conditioner ids of the released model. The checkpoint's key prefixes
# (`conditioner.conditioners.<id>.`) are built from them, so they are fixed.
OMNI_ID = "omni_prompt"
SYNC_ID = "sync_feature"
SPEECH_ID = "speech_prompt"
MEL_ID = "audio_input_prompt"
CONDITIONER_TYPES: dict[str, str] = {
    OMNI_ID: "qwen_omni",
    SYNC_ID: "sync_feature",
    SPEECH_ID: "tts-f5",
    MEL_ID: "mel_spec",
}

# Widths hard-coded in the released network (not configurable there).
COND_DIM = 768
MLLM_DEFAULT_HIDDEN_SIZE = 2048  # Qwen2.5-Omni-3B thinker text width
SYNC_DEFAULT_OUTPUT_DIM = 128  # constructor default of the sync conditioner
MEL_WINDOW_S = 10.0  # the mel conditioner's input window
MEL_NUM_FRAMES = 1723  # frames of a 10 s window at hop 256, baked into `proj_sequence_features`

# `builtin:` MLLM names are materialised in code (see model/tiny_processor.py); their thinker width.
BUILTIN_MLLM_HIDDEN_SIZE: dict[str, int] = {"builtin:tiny": 64}

MLLM_PATH_ENV = "QWEN_OMNI_MODEL_PATH"
PACKAGED_VOCAB = Path(__file__).resolve().parent / "data" / "vocab.txt"
# Presets whose trained weights ship in this package (sampler + thinker, released key names) once
# they exist; see docs/model.md, "The embedded small model".
PACKAGED_WEIGHTS: dict[str, Path] = {"small": Path(__file__).resolve().parent / "data" / "small" / "model.safetensors"}
RELEASED_VOCAB_PATH = "./audio_omni/data/vocab.txt"  # cwd-relative path written in the released file


# --------------------------------------------------------------------------- validation helpers


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _positive_ints(name: str, values: tuple[int, ...]) -> None:
    if not values:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    for i, v in enumerate(values):
        _positive(f"{name}[{i}]", v)


def _keys(names: str) -> frozenset[str]:
    return frozenset(names.split())


def _take(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"missing required field {where}.{key}")
    return d[key]


def _check_keys(d: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _expect(d: Mapping[str, Any], key: str, expected: Any, where: str) -> None:
    """A released option this implementation supports only at one value (absent = that value)."""
    if key in d and d[key] != expected:
        raise ValueError(f"{where}.{key} = {d[key]!r} is not supported; only {expected!r} is")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class VAEConfig:
    """Oobleck VAE (`model.pretransform`). Widths per stage are `channels * m` for m in `[1, *c_mults]`."""

    encoder_channels: int
    decoder_channels: int
    c_mults: tuple[int, ...]
    strides: tuple[int, ...]
    encoder_latent_dim: int  # encoder output channels = mean ‖ scale
    latent_dim: int
    downsampling_ratio: int
    io_channels: int

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "decoder_channels", "encoder_latent_dim", "latent_dim"):
            _positive(f"vae.{name}", getattr(self, name))
        _positive("vae.downsampling_ratio", self.downsampling_ratio)
        _positive("vae.io_channels", self.io_channels)
        _positive_ints("vae.c_mults", self.c_mults)
        _positive_ints("vae.strides", self.strides)
        if len(self.c_mults) != len(self.strides):
            raise ValueError(
                f"vae.c_mults has {len(self.c_mults)} entries but vae.strides has {len(self.strides)}; "
                "they must be equal"
            )
        if math.prod(self.strides) != self.downsampling_ratio:
            raise ValueError(
                f"vae.downsampling_ratio = {self.downsampling_ratio} but the product of "
                f"vae.strides {list(self.strides)} is {math.prod(self.strides)}"
            )
        if self.encoder_latent_dim != 2 * self.latent_dim:
            raise ValueError(
                f"vae encoder latent_dim = {self.encoder_latent_dim} must be 2 * latent_dim "
                f"= {2 * self.latent_dim} (the VAE bottleneck splits it into mean and scale)"
            )
        if self.encoder_latent_dim != self.encoder_channels:
            # diffusers' AutoencoderOobleck ties the encoder output width to its hidden size.
            raise ValueError(
                f"vae encoder latent_dim = {self.encoder_latent_dim} must equal encoder channels "
                f"= {self.encoder_channels} (diffusers AutoencoderOobleck layout)"
            )

    @property
    def num_stages(self) -> int:
        return len(self.strides)


@dataclass(frozen=True)
class MelCodecConfig:
    """Fixed log-mel codec in place of the Oobleck VAE (`model.melcodec`; the `small` preset only).

    A latent frame is the normalised log power of `n_mels` mel bands (0 to `f_max` Hz) averaged over
    `hop / stft_hop` STFT frames; decoding rebuilds magnitudes and their phase by Griffin-Lim
    (`griffin_lim_iters` iterations). Not part of the released schema: written as
    `pretransform.type = "mel_codec"`.
    """

    hop: int
    n_fft: int
    stft_hop: int
    n_mels: int
    f_max: float
    log_floor: float
    griffin_lim_iters: int
    io_channels: int

    def __post_init__(self) -> None:
        for name in ("hop", "n_fft", "stft_hop", "n_mels", "griffin_lim_iters", "io_channels"):
            _positive(f"mel_codec.{name}", getattr(self, name))
        if self.hop % self.stft_hop:
            raise ValueError(f"mel_codec.hop = {self.hop} must be a multiple of stft_hop = {self.stft_hop}")
        if self.stft_hop > self.n_fft:
            raise ValueError(f"mel_codec.stft_hop = {self.stft_hop} must be at most n_fft = {self.n_fft}")
        if not self.f_max > 0 or not self.log_floor > 0:
            raise ValueError(f"mel_codec.f_max and log_floor must be > 0, got {self.f_max}, {self.log_floor}")

    @property
    def latent_dim(self) -> int:
        return self.n_mels

    @property
    def downsampling_ratio(self) -> int:
        return self.hop


@dataclass(frozen=True)
class MLLMConfig:
    """Frozen Qwen2.5-Omni thinker (`omni_prompt` conditioner).

    `model_name_or_path` is a local folder, a hub id, or a `builtin:` name; `hidden_size` is the
    width of the thinker's text hidden states (the in-features of `proj_features`).
    """

    model_name_or_path: str
    pad_length: int
    layer_idx: int
    hidden_size: int = MLLM_DEFAULT_HIDDEN_SIZE

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("mllm.model_name_or_path must be a non-empty string")
        _positive("mllm.pad_length", self.pad_length)
        _positive("mllm.hidden_size", self.hidden_size)
        if isinstance(self.layer_idx, bool) or not isinstance(self.layer_idx, int):
            raise ValueError(f"mllm.layer_idx must be an integer, got {self.layer_idx!r}")


@dataclass(frozen=True)
class SyncConfig:
    """Synchformer feature projection (`sync_feature`): [seq_in, 768] -> [seq_out, 768]."""

    seq_in: int = 240
    seq_out: int = SYNC_DEFAULT_OUTPUT_DIM

    def __post_init__(self) -> None:
        _positive("sync.seq_in", self.seq_in)
        _positive("sync.seq_out", self.seq_out)


@dataclass(frozen=True)
class SpeechConfig:
    """Transcript encoder (`speech_prompt`, F5-TTS style text encoder)."""

    vocab_file: Path
    seq_len: int
    proj_seq_len: int

    def __post_init__(self) -> None:
        _positive("speech.seq_len", self.seq_len)
        _positive("speech.proj_seq_len", self.proj_seq_len)


@dataclass(frozen=True)
class MelConfig:
    """Log-mel conditioner of a 10 s mono reference (`audio_input_prompt`)."""

    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    sample_rate: int
    seq_len: int
    mask_ratio_start: float
    mask_ratio_end: float

    def __post_init__(self) -> None:
        for name in ("n_fft", "hop_length", "win_length", "n_mels", "sample_rate", "seq_len"):
            _positive(f"mel.{name}", getattr(self, name))
        if self.win_length > self.n_fft:
            raise ValueError(f"mel.win_length = {self.win_length} must be <= mel.n_fft = {self.n_fft}")
        if not 0.0 <= self.mask_ratio_start <= self.mask_ratio_end <= 1.0:
            raise ValueError(
                f"mel mask ratios must satisfy 0 <= start <= end <= 1, got start={self.mask_ratio_start}, "
                f"end={self.mask_ratio_end}"
            )
        frames = self.window_samples // self.hop_length + 1  # centred STFT
        if frames != MEL_NUM_FRAMES:
            raise ValueError(
                f"mel settings give {frames} frames for a {MEL_WINDOW_S:g} s window "
                f"(sample_rate {self.sample_rate}, hop_length {self.hop_length}); the released "
                f"conditioner's sequence projection needs exactly {MEL_NUM_FRAMES}"
            )

    @property
    def window_samples(self) -> int:
        """Samples of the fixed input window (441000 at 44.1 kHz)."""
        return round(MEL_WINDOW_S * self.sample_rate)

    @property
    def window_s(self) -> float:
        return MEL_WINDOW_S

    @property
    def num_frames(self) -> int:
        """Log-mel frames of one window; fixed by the released weights."""
        return MEL_NUM_FRAMES


@dataclass(frozen=True)
class DiTConfig:
    """Diffusion transformer (`model.diffusion.config`)."""

    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int = COND_DIM
    global_cond_dim: int = COND_DIM
    # Channels concatenated to the noisy latent: 0 (released), or io_channels for an edit's source
    # latent (the `small` preset; `model.parts.SamplerPart.source_latents`).
    input_concat_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim"):
            _positive(f"dit.{name}", getattr(self, name))
        if self.input_concat_dim not in (0, self.io_channels):
            raise ValueError(
                f"dit.input_concat_dim = {self.input_concat_dim} must be 0 or dit.io_channels = {self.io_channels} "
                "(the only input concatenated is the source's latent)"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"dit.embed_dim = {self.embed_dim} must be divisible by dit.num_heads = {self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


# --------------------------------------------------------------------------- top level


@dataclass(frozen=True)
class AudioOmniConfig:
    """The whole model. `sample_size` is the requested length in samples; the network produces
    `output_samples = (sample_size // downsampling_ratio) * downsampling_ratio`."""

    sample_size: int
    sample_rate: int
    video_fps: int
    cond_dim: int
    high_level_cond_ids: tuple[str, ...]
    low_level_cond_ids: tuple[str, ...]
    vae: VAEConfig | MelCodecConfig
    mllm: MLLMConfig
    sync: SyncConfig
    speech: SpeechConfig
    mel: MelConfig
    dit: DiTConfig

    def __post_init__(self) -> None:
        _positive("sample_size", self.sample_size)
        _positive("sample_rate", self.sample_rate)
        _positive("video_fps", self.video_fps)
        if self.cond_dim != COND_DIM:
            raise ValueError(f"cond_dim = {self.cond_dim} is not supported; the released width is {COND_DIM}")
        if self.latent_length < 1:
            raise ValueError(
                f"sample_size = {self.sample_size} is shorter than one latent frame "
                f"(downsampling_ratio {self.vae.downsampling_ratio})"
            )
        if self.dit.io_channels != self.vae.latent_dim:
            raise ValueError(
                f"dit.io_channels = {self.dit.io_channels} must equal vae.latent_dim = {self.vae.latent_dim}"
            )
        for name in ("cond_token_dim", "global_cond_dim"):
            if getattr(self.dit, name) != self.cond_dim:
                raise ValueError(
                    f"dit.{name} = {getattr(self.dit, name)} must equal cond_dim = {self.cond_dim}"
                )
        if self.mel.sample_rate != self.sample_rate:
            raise ValueError(
                f"mel.sample_rate = {self.mel.sample_rate} must equal sample_rate = {self.sample_rate}"
            )
        ids = [*self.high_level_cond_ids, *self.low_level_cond_ids]
        for cid in ids:
            if cid not in CONDITIONER_TYPES:
                raise ValueError(f"unknown conditioner id {cid!r}; known ids: {sorted(CONDITIONER_TYPES)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"conditioner ids may appear once across high and low level, got {ids}")

    # ----------------------------------------------------------------- derived

    @property
    def latent_length(self) -> int:
        """Latent frames the DiT works on (floor of sample_size / downsampling_ratio)."""
        return self.sample_size // self.vae.downsampling_ratio

    @property
    def output_samples(self) -> int:
        """Samples per channel of one decoded generation."""
        return self.latent_length * self.vae.downsampling_ratio

    @property
    def output_band_hz(self) -> float | None:
        """Highest frequency the decoder can produce, where it is below Nyquist (the mel codec)."""
        return self.vae.f_max if isinstance(self.vae, MelCodecConfig) else None

    @property
    def window_s(self) -> float:
        """Duration of one generated clip in seconds (10.96 s for the released model)."""
        return self.output_samples / self.sample_rate

    # ----------------------------------------------------------------- I/O

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> AudioOmniConfig:
        """Read a released-schema JSON file; relative paths inside resolve against its folder."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {p} is not valid JSON: {exc}") from exc
        return cls.from_dict(d, base_dir=p.resolve().parent)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None
    ) -> AudioOmniConfig:
        """Parse the released schema (see `Audio-Omni.json`). `base_dir` anchors relative paths."""
        base = Path(base_dir) if base_dir is not None else None
        _check_keys(
            d, {"model_type", "sample_size", "sample_rate", "video_fps", "audio_channels", "model"}, "config"
        )
        _expect(d, "model_type", "diffusion_cond", "config")
        model = _take(d, "model", "config")
        _check_keys(model, {"pretransform", "conditioning", "diffusion", "io_channels"}, "model")

        vae = _parse_vae(_take(model, "pretransform", "model"))
        if "audio_channels" in d and d["audio_channels"] != vae.io_channels:
            raise ValueError(
                f"audio_channels = {d['audio_channels']} must equal the VAE io_channels = {vae.io_channels}"
            )
        sections = _parse_conditioning(_take(model, "conditioning", "model"), base)
        diffusion = _take(model, "diffusion", "model")
        dit = _parse_dit(diffusion)
        if "io_channels" in model and model["io_channels"] != dit.io_channels:
            raise ValueError(
                f"model.io_channels = {model['io_channels']} must equal "
                f"model.diffusion.config.io_channels = {dit.io_channels}"
            )
        return cls(
            sample_size=_take(d, "sample_size", "config"),
            sample_rate=_take(d, "sample_rate", "config"),
            video_fps=d.get("video_fps", 5),
            cond_dim=sections["cond_dim"],
            high_level_cond_ids=tuple(_take(diffusion, "high_level_cond_ids", "model.diffusion")),
            low_level_cond_ids=tuple(_take(diffusion, "low_level_cond_ids", "model.diffusion")),
            vae=vae,
            mllm=sections["mllm"],
            sync=sections["sync"],
            speech=sections["speech"],
            mel=sections["mel"],
            dit=dit,
        )

    def to_dict(self, relative_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The released schema. Paths under `relative_to` are written relative to it; the packaged
        vocabulary is written as the released cwd-relative path."""
        v = self.vae
        pretransform = _mel_codec_dict(v) if isinstance(v, MelCodecConfig) else _oobleck_dict(v)
        sync_cfg: dict[str, Any] = {"sync_seq_dim": self.sync.seq_in}
        if self.sync.seq_out != SYNC_DEFAULT_OUTPUT_DIM:  # the released file leaves the default out
            sync_cfg["sync_output_dim"] = self.sync.seq_out
        sync_cfg["project_out"] = False
        vocab = (
            RELEASED_VOCAB_PATH
            if Path(self.speech.vocab_file).resolve() == PACKAGED_VOCAB
            else _relative(str(self.speech.vocab_file), relative_to)
        )
        m = self.mel
        return {
            "model_type": "diffusion_cond",
            "sample_size": self.sample_size,
            "sample_rate": self.sample_rate,
            "video_fps": self.video_fps,
            "audio_channels": v.io_channels,
            "model": {
                "pretransform": pretransform,
                "conditioning": {
                    "configs": [
                        {
                            "id": OMNI_ID,
                            "type": CONDITIONER_TYPES[OMNI_ID],
                            "config": {
                                "qwen_omni_model_name": _relative(self.mllm.model_name_or_path, relative_to),
                                "add_sync_feature": False,
                                "project_out": False,
                                "out_features": MLLM_DEFAULT_HIDDEN_SIZE,
                                "pad_length": self.mllm.pad_length,
                                "layer_idx": self.mllm.layer_idx,
                            },
                        },
                        {"id": SYNC_ID, "type": CONDITIONER_TYPES[SYNC_ID], "config": sync_cfg},
                        {
                            "id": SPEECH_ID,
                            "type": CONDITIONER_TYPES[SPEECH_ID],
                            "config": {
                                "tts_model_name": "tts-f5",
                                "vocab_file": vocab,
                                "seq_len": self.speech.seq_len,
                                "proj_seq_len": self.speech.proj_seq_len,
                            },
                        },
                        {
                            "id": MEL_ID,
                            "type": CONDITIONER_TYPES[MEL_ID],
                            "config": {
                                "mel_spec_type": "mel_features",
                                "n_fft": m.n_fft,
                                "hop_length": m.hop_length,
                                "win_length": m.win_length,
                                "n_mel_channels": m.n_mels,
                                "target_sample_rate": m.sample_rate,
                                "mask_ratio_start": m.mask_ratio_start,
                                "mask_ratio_end": m.mask_ratio_end,
                                "seq_len": m.seq_len,
                            },
                        },
                    ],
                    "cond_dim": self.cond_dim,
                },
                "diffusion": {
                    "high_level_cond_ids": list(self.high_level_cond_ids),
                    "low_level_cond_ids": list(self.low_level_cond_ids),
                    "type": "dit",
                    "diffusion_objective": "rectified_flow",
                    "config": {
                        "io_channels": self.dit.io_channels,
                        "embed_dim": self.dit.embed_dim,
                        "depth": self.dit.depth,
                        "num_heads": self.dit.num_heads,
                        "cond_token_dim": self.dit.cond_token_dim,
                        "global_cond_dim": self.dit.global_cond_dim,
                        "project_cond_tokens": True,
                        "transformer_type": "continuous_transformer",
                        "condition_mask_type": "cat",
                        "video_fps": self.video_fps,
                        **({"input_concat_dim": self.dit.input_concat_dim} if self.dit.input_concat_dim else {}),
                    },
                },
                "io_channels": self.dit.io_channels,
            },
        }


# --------------------------------------------------------------------------- section parsers


def _oobleck_dict(v: VAEConfig) -> dict[str, Any]:
    enc = {
        "in_channels": v.io_channels,
        "channels": v.encoder_channels,
        "c_mults": list(v.c_mults),
        "strides": list(v.strides),
        "latent_dim": v.encoder_latent_dim,
        "use_snake": True,
    }
    dec = {
        "out_channels": v.io_channels,
        "channels": v.decoder_channels,
        "c_mults": list(v.c_mults),
        "strides": list(v.strides),
        "latent_dim": v.latent_dim,
        "use_snake": True,
        "final_tanh": False,
    }
    return {
        "type": "autoencoder",
        "iterate_batch": True,
        "config": {
            "encoder": {"type": "oobleck", "requires_grad": False, "config": enc},
            "decoder": {"type": "oobleck", "config": dec},
            "bottleneck": {"type": "vae"},
            "latent_dim": v.latent_dim,
            "downsampling_ratio": v.downsampling_ratio,
            "io_channels": v.io_channels,
        },
    }


_MEL_CODEC_FIELDS = ("hop", "n_fft", "stft_hop", "n_mels", "f_max", "log_floor", "griffin_lim_iters", "io_channels")


def _mel_codec_dict(v: MelCodecConfig) -> dict[str, Any]:
    return {"type": "mel_codec", "config": {k: getattr(v, k) for k in _MEL_CODEC_FIELDS}}


def _parse_mel_codec(pre: Mapping[str, Any]) -> MelCodecConfig:
    where = "model.pretransform"
    _check_keys(pre, {"type", "config"}, where)
    cfg = _take(pre, "config", where)
    _check_keys(cfg, set(_MEL_CODEC_FIELDS), f"{where}.config")
    return MelCodecConfig(**{k: _take(cfg, k, f"{where}.config") for k in _MEL_CODEC_FIELDS})


def _parse_vae(pre: Mapping[str, Any]) -> VAEConfig | MelCodecConfig:
    where = "model.pretransform"
    if pre.get("type") == "mel_codec":
        return _parse_mel_codec(pre)
    _check_keys(
        pre, {"type", "iterate_batch", "config", "scale", "model_half", "chunked", "enable_grad"}, where
    )
    _expect(pre, "type", "autoencoder", where)
    _expect(pre, "scale", 1.0, where)  # latents are used unscaled
    cfg = _take(pre, "config", where)
    cw = f"{where}.config"
    _check_keys(
        cfg, {"encoder", "decoder", "bottleneck", "latent_dim", "downsampling_ratio", "io_channels"}, cw
    )
    bottleneck = _take(cfg, "bottleneck", cw)
    _expect(bottleneck, "type", "vae", f"{cw}.bottleneck")
    encoder, decoder = _take(cfg, "encoder", cw), _take(cfg, "decoder", cw)
    for part, sub in (("encoder", encoder), ("decoder", decoder)):
        _expect(sub, "type", "oobleck", f"{cw}.{part}")
        _expect(_take(sub, "config", f"{cw}.{part}"), "use_snake", True, f"{cw}.{part}.config")
    enc, dec = encoder["config"], decoder["config"]
    _check_keys(
        enc,
        {"in_channels", "channels", "c_mults", "strides", "latent_dim", "use_snake"},
        f"{cw}.encoder.config",
    )
    _check_keys(
        dec,
        {"out_channels", "channels", "c_mults", "strides", "latent_dim", "use_snake", "final_tanh"},
        f"{cw}.decoder.config",
    )
    _expect(dec, "final_tanh", False, f"{cw}.decoder.config")
    for key in ("c_mults", "strides"):
        if list(_take(enc, key, f"{cw}.encoder.config")) != list(_take(dec, key, f"{cw}.decoder.config")):
            raise ValueError(
                f"encoder {key} {list(enc[key])} differs from decoder {key} {list(dec[key])}; "
                "the Oobleck VAE mirrors one list"
            )
    io_channels = _take(cfg, "io_channels", cw)
    for part, sub, key in (("encoder", enc, "in_channels"), ("decoder", dec, "out_channels")):
        if sub.get(key, io_channels) != io_channels:
            raise ValueError(f"{cw}.{part}.config.{key} = {sub[key]} must equal io_channels = {io_channels}")
    latent_dim = _take(cfg, "latent_dim", cw)
    if _take(dec, "latent_dim", f"{cw}.decoder.config") != latent_dim:
        raise ValueError(
            f"{cw}.decoder.config.latent_dim = {dec['latent_dim']} must equal latent_dim = {latent_dim}"
        )
    return VAEConfig(
        encoder_channels=_take(enc, "channels", f"{cw}.encoder.config"),
        decoder_channels=_take(dec, "channels", f"{cw}.decoder.config"),
        c_mults=tuple(enc["c_mults"]),
        strides=tuple(enc["strides"]),
        encoder_latent_dim=_take(enc, "latent_dim", f"{cw}.encoder.config"),
        latent_dim=latent_dim,
        downsampling_ratio=_take(cfg, "downsampling_ratio", cw),
        io_channels=io_channels,
    )


def _parse_conditioning(cond: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    where = "model.conditioning"
    _check_keys(cond, {"configs", "cond_dim"}, where)
    entries = _take(cond, "configs", where)
    seen: dict[str, Mapping[str, Any]] = {}
    for i, entry in enumerate(entries):
        ew = f"{where}.configs[{i}]"
        cid, ctype = _take(entry, "id", ew), _take(entry, "type", ew)
        if ctype not in CONDITIONER_TYPES.values():
            raise ValueError(
                f"unknown conditioner type {ctype!r} at {ew}; known: {sorted(CONDITIONER_TYPES.values())}"
            )
        if CONDITIONER_TYPES.get(cid) != ctype:
            raise ValueError(
                f"conditioner {cid!r} of type {ctype!r} at {ew} is not supported; the released "
                f"id -> type pairs are {CONDITIONER_TYPES}"
            )
        if cid in seen:
            raise ValueError(f"conditioner id {cid!r} appears twice in {where}.configs")
        seen[cid] = entry.get("config", {})
    missing = sorted(set(CONDITIONER_TYPES) - set(seen))
    if missing:
        raise ValueError(f"{where}.configs lacks conditioner(s) {missing}")

    o, ow = seen[OMNI_ID], f"{where}[{OMNI_ID}].config"
    _check_keys(
        o,
        _keys(
            "qwen_omni_model_name add_sync_feature project_out out_features "
            "pad_length layer_idx in_features zip_features video_fps connector"
        ),
        ow,
    )
    _expect(o, "project_out", False, ow)
    _expect(o, "zip_features", False, ow)
    mllm_path = resolve_mllm_path(_take(o, "qwen_omni_model_name", ow), base)
    mllm = MLLMConfig(
        model_name_or_path=mllm_path,
        pad_length=_take(o, "pad_length", ow),
        layer_idx=_take(o, "layer_idx", ow),
        hidden_size=mllm_hidden_size(mllm_path),
    )

    s, sw = seen[SYNC_ID], f"{where}[{SYNC_ID}].config"
    _check_keys(s, {"sync_seq_dim", "sync_output_dim", "project_out", "input_dim", "sync_fps"}, sw)
    _expect(s, "project_out", False, sw)
    _expect(s, "input_dim", COND_DIM, sw)
    sync = SyncConfig(
        seq_in=_take(s, "sync_seq_dim", sw), seq_out=s.get("sync_output_dim", SYNC_DEFAULT_OUTPUT_DIM)
    )

    t, tw = seen[SPEECH_ID], f"{where}[{SPEECH_ID}].config"
    _check_keys(t, {"tts_model_name", "vocab_file", "seq_len", "proj_seq_len", "project_out"}, tw)
    _expect(t, "project_out", False, tw)
    speech = SpeechConfig(
        vocab_file=resolve_vocab_file(t.get("vocab_file", RELEASED_VOCAB_PATH), base),
        seq_len=_take(t, "seq_len", tw),
        proj_seq_len=_take(t, "proj_seq_len", tw),
    )

    m, mw = seen[MEL_ID], f"{where}[{MEL_ID}].config"
    _check_keys(
        m,
        _keys(
            "mel_spec_type n_fft hop_length win_length n_mel_channels "
            "target_sample_rate mask_ratio_start mask_ratio_end seq_len project_out"
        ),
        mw,
    )
    _expect(m, "mel_spec_type", "mel_features", mw)
    _expect(m, "project_out", False, mw)
    mel = MelConfig(
        n_fft=_take(m, "n_fft", mw),
        hop_length=_take(m, "hop_length", mw),
        win_length=_take(m, "win_length", mw),
        n_mels=_take(m, "n_mel_channels", mw),
        sample_rate=_take(m, "target_sample_rate", mw),
        seq_len=_take(m, "seq_len", mw),
        mask_ratio_start=float(_take(m, "mask_ratio_start", mw)),
        mask_ratio_end=float(_take(m, "mask_ratio_end", mw)),
    )
    return {
        "cond_dim": _take(cond, "cond_dim", where),
        "mllm": mllm,
        "sync": sync,
        "speech": speech,
        "mel": mel,
    }


def _parse_dit(diffusion: Mapping[str, Any]) -> DiTConfig:
    where = "model.diffusion"
    _check_keys(
        diffusion,
        {"high_level_cond_ids", "low_level_cond_ids", "type", "diffusion_objective", "config"},
        where,
    )
    _expect(diffusion, "type", "dit", where)
    _expect(diffusion, "diffusion_objective", "rectified_flow", where)
    c, cw = _take(diffusion, "config", where), f"{where}.config"
    _check_keys(
        c,
        _keys(
            "io_channels embed_dim depth num_heads cond_token_dim global_cond_dim "
            "project_cond_tokens transformer_type condition_mask_type video_fps "
            "patch_size project_global_cond input_concat_dim prepend_cond_dim "
            "global_cond_type"
        ),
        cw,
    )
    # Options with one supported value (the released one; an absent key means that value too).
    for key, value in (
        ("project_cond_tokens", True),
        ("transformer_type", "continuous_transformer"),
        ("patch_size", 1),
        ("project_global_cond", True),
        ("prepend_cond_dim", 0),
        ("global_cond_type", "prepend"),
    ):
        _expect(c, key, value, cw)
    return DiTConfig(
        io_channels=_take(c, "io_channels", cw),
        embed_dim=_take(c, "embed_dim", cw),
        depth=_take(c, "depth", cw),
        num_heads=_take(c, "num_heads", cw),
        cond_token_dim=_take(c, "cond_token_dim", cw),
        global_cond_dim=_take(c, "global_cond_dim", cw),
        input_concat_dim=c.get("input_concat_dim", 0),
    )


# --------------------------------------------------------------------------- path resolution


def resolve_mllm_path(name: str, base_dir: Path | None) -> str:
    """Where the thinker comes from.

    Order: a `builtin:` name stays; a relative name that is a folder beside the config file becomes
    that folder; an existing absolute folder stays; otherwise `$QWEN_OMNI_MODEL_PATH` (must be a
    folder when set) replaces the name; otherwise the name (a hub id) stays as given.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"qwen_omni_model_name must be a non-empty string, got {name!r}")
    if name.startswith("builtin:"):
        return name
    p = Path(name).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).is_dir():
        return str((base_dir / p).resolve())
    if p.is_absolute() and p.is_dir():
        return str(p)
    env = os.environ.get(MLLM_PATH_ENV)
    if env:
        if not Path(env).is_dir():
            raise ValueError(f"${MLLM_PATH_ENV} = {env!r} is not a folder")
        return str(Path(env).resolve())
    return name


def mllm_hidden_size(model_name_or_path: str) -> int:
    """Thinker text width: read from a local folder's `config.json` when there is one, else 2048."""
    if model_name_or_path in BUILTIN_MLLM_HIDDEN_SIZE:
        return BUILTIN_MLLM_HIDDEN_SIZE[model_name_or_path]
    cfg_path = Path(model_name_or_path) / "config.json"
    if not cfg_path.is_file():
        return MLLM_DEFAULT_HIDDEN_SIZE
    try:
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"MLLM config {cfg_path} is not valid JSON: {exc}") from exc
    # A full Qwen2_5OmniConfig nests the thinker; a bare thinker config has text_config at the top.
    for section in (d.get("thinker_config", {}).get("text_config"), d.get("text_config"), d):
        if isinstance(section, Mapping) and isinstance(section.get("hidden_size"), int):
            return section["hidden_size"]
    return MLLM_DEFAULT_HIDDEN_SIZE


def resolve_vocab_file(value: str, base_dir: Path | None) -> Path:
    """The speech vocabulary. The released cwd-relative path, or a file that does not exist, means the
    packaged copy (byte-identical to the released `vocab.txt`)."""
    if Path(value).as_posix() == Path(RELEASED_VOCAB_PATH).as_posix():
        return PACKAGED_VOCAB
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.resolve() if p.is_file() else PACKAGED_VOCAB


def _relative(path: str, relative_to: str | os.PathLike[str] | None) -> str:
    if relative_to is None or path.startswith("builtin:"):
        return path
    try:
        return Path(path).resolve().relative_to(Path(relative_to).resolve()).as_posix()
    except ValueError:  # not under relative_to (or a hub id)
        return path


# --------------------------------------------------------------------------- presets

# The released `Audio-Omni.json` (spec §1), verbatim in content.
RELEASED_CONFIG: dict[str, Any] = {
    "model_type": "diffusion_cond",
    "sample_size": 485100,
    "sample_rate": 44100,
    "video_fps": 5,
    "audio_channels": 2,
    "model": {
        "pretransform": {
            "type": "autoencoder",
            "iterate_batch": True,
            "config": {
                "encoder": {
                    "type": "oobleck",
                    "requires_grad": False,
                    "config": {
                        "in_channels": 2,
                        "channels": 128,
                        "c_mults": [1, 2, 4, 8, 16],
                        "strides": [2, 4, 4, 8, 8],
                        "latent_dim": 128,
                        "use_snake": True,
                    },
                },
                "decoder": {
                    "type": "oobleck",
                    "config": {
                        "out_channels": 2,
                        "channels": 128,
                        "c_mults": [1, 2, 4, 8, 16],
                        "strides": [2, 4, 4, 8, 8],
                        "latent_dim": 64,
                        "use_snake": True,
                        "final_tanh": False,
                    },
                },
                "bottleneck": {"type": "vae"},
                "latent_dim": 64,
                "downsampling_ratio": 2048,
                "io_channels": 2,
            },
        },
        "conditioning": {
            "configs": [
                {
                    "id": "omni_prompt",
                    "type": "qwen_omni",
                    "config": {
                        "qwen_omni_model_name": "Qwen/Qwen2.5-Omni-3B",
                        "add_sync_feature": False,
                        "project_out": False,
                        "out_features": 2048,
                        "pad_length": 2048,
                        "layer_idx": -2,
                    },
                },
                {
                    "id": "sync_feature",
                    "type": "sync_feature",
                    "config": {"sync_seq_dim": 240, "project_out": False},
                },
                {
                    "id": "speech_prompt",
                    "type": "tts-f5",
                    "config": {
                        "tts_model_name": "tts-f5",
                        "vocab_file": RELEASED_VOCAB_PATH,
                        "seq_len": 2584,
                        "proj_seq_len": 256,
                    },
                },
                {
                    "id": "audio_input_prompt",
                    "type": "mel_spec",
                    "config": {
                        "mel_spec_type": "mel_features",
                        "n_fft": 1024,
                        "hop_length": 256,
                        "win_length": 1024,
                        "n_mel_channels": 100,
                        "target_sample_rate": 44100,
                        "mask_ratio_start": 0.7,
                        "mask_ratio_end": 1,
                        "seq_len": 236,
                    },
                },
            ],
            "cond_dim": 768,
        },
        "diffusion": {
            "high_level_cond_ids": ["omni_prompt", "speech_prompt"],
            "low_level_cond_ids": ["sync_feature", "audio_input_prompt"],
            "type": "dit",
            "diffusion_objective": "rectified_flow",
            "config": {
                "io_channels": 64,
                "embed_dim": 2048,
                "depth": 36,
                "num_heads": 32,
                "cond_token_dim": 768,
                "global_cond_dim": 768,
                "project_cond_tokens": True,
                "transformer_type": "continuous_transformer",
                "condition_mask_type": "cat",
                "video_fps": 5,
            },
        },
        "io_channels": 64,
    },
}


def _full() -> AudioOmniConfig:
    """The released model (Qwen2.5-Omni-3B thinker, 36-block DiT, 10.96 s per generation)."""
    return AudioOmniConfig.from_dict(RELEASED_CONFIG)


def _tiny() -> AudioOmniConfig:
    """Random-weight model for CPU tests and local runs: a 10.03 s stereo 44.1 kHz clip.

    The hard-coded widths (768-wide conditioning, 240-frame sync input, 1723-frame mel window) are
    kept so the same code paths run; everything else is shrunk. The VAE decoder is 8 channels wide
    with a x2048 upsampling like the full model, so 216 latents decode to 442368 samples.
    """
    vae = VAEConfig(
        encoder_channels=16,  # diffusers ties encoder width to its 2 * latent_dim output
        decoder_channels=8,
        c_mults=(1, 2, 4, 8),
        strides=(4, 4, 8, 16),
        encoder_latent_dim=16,
        latent_dim=8,
        downsampling_ratio=2048,
        io_channels=2,
    )
    return AudioOmniConfig(
        sample_size=216 * 2048,  # 442368 samples >= 10 s at 44.1 kHz
        sample_rate=44100,
        video_fps=5,
        cond_dim=COND_DIM,
        high_level_cond_ids=(OMNI_ID, SPEECH_ID),
        low_level_cond_ids=(SYNC_ID, MEL_ID),
        vae=vae,
        mllm=MLLMConfig(
            model_name_or_path="builtin:tiny",
            pad_length=32,
            layer_idx=-2,
            hidden_size=BUILTIN_MLLM_HIDDEN_SIZE["builtin:tiny"],
        ),
        sync=SyncConfig(seq_in=240, seq_out=8),
        speech=SpeechConfig(vocab_file=PACKAGED_VOCAB, seq_len=64, proj_seq_len=8),
        mel=MelConfig(
            n_fft=1024,
            hop_length=256,
            win_length=1024,
            n_mels=100,
            sample_rate=44100,
            seq_len=8,
            mask_ratio_start=0.7,
            mask_ratio_end=1.0,
        ),
        dit=DiTConfig(io_channels=vae.latent_dim, embed_dim=128, depth=2, num_heads=2),
    )


def _small() -> AudioOmniConfig:
    """A small model trained here on generated sounds (`bench/train_small.py`, docs/model.md).

    Same clip length, thinker and hard-coded widths as `tiny`; the Oobleck VAE is replaced by the
    fixed log-mel codec (`model.melcodec`: 64 bands up to 11.025 kHz, 216 frames, Griffin-Lim
    decoding), because a waveform VAE does not train from scratch on a CPU in the time this model
    gets. A 3-block DiT of width 128 that also reads the edit's source latent as 64 input-concat
    channels, so output frame k sees source frame k in its own token; the mel conditioner keeps
    tiny's 8 tokens (a summary of the source; the per-frame path is the concat). The fp16 checkpoint (with
    the float32 tiny thinker) stays under 20 MB: the speech conditioner alone, fixed by the released
    layout, is 5.9 M parameters. Without weights the DiT is random, like `tiny`.
    """
    from dataclasses import replace  # local: this factory is its only user

    tiny = _tiny()
    codec = MelCodecConfig(
        hop=2048,
        n_fft=2048,
        stft_hop=512,
        n_mels=64,
        f_max=11025.0,
        log_floor=1e-4,
        griffin_lim_iters=32,
        io_channels=2,
    )
    return replace(
        tiny,
        vae=codec,
        # The edit's source latent is also concatenated to the noisy latent (input_concat_dim), so
        # output frame k sees source frame k in its own token, not only through attention.
        dit=DiTConfig(io_channels=codec.latent_dim, embed_dim=128, depth=3, num_heads=2, input_concat_dim=64),
    )


PRESETS: dict[str, Callable[[], AudioOmniConfig]] = {"full": _full, "tiny": _tiny, "small": _small}


def get_preset(name: str) -> AudioOmniConfig:
    """Build a preset by name; an unknown name raises `ValueError` listing the known ones."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
    return factory()


def packaged_weights(preset: str) -> Path | None:
    """The weights file a preset ships with, or None when it has none or the file is absent."""
    path = PACKAGED_WEIGHTS.get(preset)
    return path if path is not None and path.is_file() else None


def load_config(preset_or_path: str | os.PathLike[str]) -> AudioOmniConfig:
    """A preset name (`tiny`, `full`) or the path of a released-schema JSON file."""
    if isinstance(preset_or_path, str) and preset_or_path in PRESETS:
        return get_preset(preset_or_path)
    p = Path(preset_or_path)
    if p.suffix.lower() == ".json" or p.exists():
        return AudioOmniConfig.from_json(p)
    raise ValueError(
        f"{str(preset_or_path)!r} is neither a model preset ({', '.join(sorted(PRESETS))}) "
        "nor a JSON config file"
    )
