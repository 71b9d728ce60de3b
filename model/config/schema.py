"""Reading and writing the released `Audio-Omni.json` schema (a stable-audio-tools nested dict).

`parse` reads it strictly (unknown conditioner types, unknown keys and unsupported options raise
`ValueError` naming the offending path) into the keyword arguments of `AudioOmniConfig`; `write`
produces the same schema back. Three extensions, written only when they differ from the release:
`pretransform.type = "mel_codec"` (the small preset's codec), the mel conditioner's
`num_frames` (the frame count of its sequence projection, hard-coded to 1723 in the release) and
the sync conditioner's `extractor` (the Synchformer visual extractor's layout, released by default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config.checks import check_keys, expect, keys, take
from model.config.codec import MelCodecConfig, VAEConfig
from model.config.conditioners import (
    CONDITIONER_TYPES,
    MEL_ID,
    MEL_NUM_FRAMES,
    OMNI_ID,
    PACKAGED_VOCAB,
    RELEASED_VOCAB_PATH,
    SPEECH_ID,
    SYNC_DEFAULT_OUTPUT_DIM,
    SYNC_ID,
    MelConfig,
    SpeechConfig,
    SyncConfig,
    resolve_vocab_file,
)
from model.config.dit import COND_DIM, DiTConfig
from model.config.mllm import MLLM_DEFAULT_HIDDEN_SIZE, MLLMConfig, mllm_hidden_size, resolve_mllm_path
from model.config.sync_extractor import SyncExtractorConfig

if TYPE_CHECKING:
    from model.config.model import AudioOmniConfig

_MEL_CODEC_FIELDS = ("hop", "n_fft", "stft_hop", "n_mels", "f_max", "log_floor", "griffin_lim_iters", "io_channels")


# --------------------------------------------------------------------------- reading


def parse(d: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    """The keyword arguments of `AudioOmniConfig` from a released-schema dict."""
    check_keys(d, {"model_type", "sample_size", "sample_rate", "video_fps", "audio_channels", "model"}, "config")
    expect(d, "model_type", "diffusion_cond", "config")
    model = take(d, "model", "config")
    check_keys(model, {"pretransform", "conditioning", "diffusion", "io_channels"}, "model")

    vae = _parse_vae(take(model, "pretransform", "model"))
    if "audio_channels" in d and d["audio_channels"] != vae.io_channels:
        raise ValueError(f"audio_channels = {d['audio_channels']} must equal the VAE io_channels = {vae.io_channels}")
    sections = _parse_conditioning(take(model, "conditioning", "model"), base)
    diffusion = take(model, "diffusion", "model")
    dit = _parse_dit(diffusion)
    if "io_channels" in model and model["io_channels"] != dit.io_channels:
        raise ValueError(
            f"model.io_channels = {model['io_channels']} must equal "
            f"model.diffusion.config.io_channels = {dit.io_channels}"
        )
    return {
        "sample_size": take(d, "sample_size", "config"),
        "sample_rate": take(d, "sample_rate", "config"),
        "video_fps": d.get("video_fps", 5),
        "high_level_cond_ids": tuple(take(diffusion, "high_level_cond_ids", "model.diffusion")),
        "low_level_cond_ids": tuple(take(diffusion, "low_level_cond_ids", "model.diffusion")),
        "vae": vae,
        "dit": dit,
        **sections,
    }


def _parse_mel_codec(pre: Mapping[str, Any]) -> MelCodecConfig:
    where = "model.pretransform"
    check_keys(pre, {"type", "config"}, where)
    cfg = take(pre, "config", where)
    check_keys(cfg, set(_MEL_CODEC_FIELDS), f"{where}.config")
    return MelCodecConfig(**{k: take(cfg, k, f"{where}.config") for k in _MEL_CODEC_FIELDS})


def _parse_vae(pre: Mapping[str, Any]) -> VAEConfig | MelCodecConfig:
    where = "model.pretransform"
    if isinstance(pre, Mapping) and pre.get("type") == "mel_codec":
        return _parse_mel_codec(pre)
    check_keys(pre, {"type", "iterate_batch", "config", "scale", "model_half", "chunked", "enable_grad"}, where)
    expect(pre, "type", "autoencoder", where)
    expect(pre, "scale", 1.0, where)  # latents are used unscaled
    cfg = take(pre, "config", where)
    cw = f"{where}.config"
    check_keys(cfg, {"encoder", "decoder", "bottleneck", "latent_dim", "downsampling_ratio", "io_channels"}, cw)
    bottleneck = take(cfg, "bottleneck", cw)
    expect(bottleneck, "type", "vae", f"{cw}.bottleneck")
    encoder, decoder = take(cfg, "encoder", cw), take(cfg, "decoder", cw)
    for part, sub in (("encoder", encoder), ("decoder", decoder)):
        expect(sub, "type", "oobleck", f"{cw}.{part}")
        expect(take(sub, "config", f"{cw}.{part}"), "use_snake", True, f"{cw}.{part}.config")
    enc, dec = encoder["config"], decoder["config"]
    ew, dw = f"{cw}.encoder.config", f"{cw}.decoder.config"
    check_keys(enc, {"in_channels", "channels", "c_mults", "strides", "latent_dim", "use_snake"}, ew)
    check_keys(dec, {"out_channels", "channels", "c_mults", "strides", "latent_dim", "use_snake", "final_tanh"}, dw)
    expect(dec, "final_tanh", False, dw)
    for key in ("c_mults", "strides"):
        if list(take(enc, key, ew)) != list(take(dec, key, dw)):
            raise ValueError(
                f"encoder {key} {list(enc[key])} differs from decoder {key} {list(dec[key])}; "
                "the Oobleck VAE mirrors one list"
            )
    io_channels = take(cfg, "io_channels", cw)
    for part, sub, key in (("encoder", enc, "in_channels"), ("decoder", dec, "out_channels")):
        if sub.get(key, io_channels) != io_channels:
            raise ValueError(f"{cw}.{part}.config.{key} = {sub[key]} must equal io_channels = {io_channels}")
    latent_dim = take(cfg, "latent_dim", cw)
    if take(dec, "latent_dim", dw) != latent_dim:
        raise ValueError(f"{dw}.latent_dim = {dec['latent_dim']} must equal latent_dim = {latent_dim}")
    return VAEConfig(
        encoder_channels=take(enc, "channels", ew),
        decoder_channels=take(dec, "channels", dw),
        c_mults=tuple(enc["c_mults"]),
        strides=tuple(enc["strides"]),
        encoder_latent_dim=take(enc, "latent_dim", ew),
        latent_dim=latent_dim,
        downsampling_ratio=take(cfg, "downsampling_ratio", cw),
        io_channels=io_channels,
    )


def _conditioner_entries(cond: Mapping[str, Any], where: str) -> dict[str, Mapping[str, Any]]:
    """The `config` of each conditioner by id, after checking ids, types and completeness."""
    seen: dict[str, Mapping[str, Any]] = {}
    for i, entry in enumerate(take(cond, "configs", where)):
        ew = f"{where}.configs[{i}]"
        cid, ctype = take(entry, "id", ew), take(entry, "type", ew)
        if ctype not in CONDITIONER_TYPES.values():
            raise ValueError(f"unknown conditioner type {ctype!r} at {ew}; known: {sorted(CONDITIONER_TYPES.values())}")
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
    return seen


def _parse_conditioning(cond: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    where = "model.conditioning"
    check_keys(cond, {"configs", "cond_dim"}, where)
    seen = _conditioner_entries(cond, where)

    o, ow = seen[OMNI_ID], f"{where}[{OMNI_ID}].config"
    check_keys(
        o,
        keys(
            "qwen_omni_model_name add_sync_feature project_out out_features "
            "pad_length layer_idx in_features zip_features video_fps connector"
        ),
        ow,
    )
    expect(o, "project_out", False, ow)
    expect(o, "zip_features", False, ow)
    mllm_path = resolve_mllm_path(take(o, "qwen_omni_model_name", ow), base)
    mllm = MLLMConfig(
        model_name_or_path=mllm_path,
        pad_length=take(o, "pad_length", ow),
        layer_idx=take(o, "layer_idx", ow),
        hidden_size=mllm_hidden_size(mllm_path),
    )

    s, sw = seen[SYNC_ID], f"{where}[{SYNC_ID}].config"
    check_keys(s, {"sync_seq_dim", "sync_output_dim", "project_out", "input_dim", "sync_fps", "extractor"}, sw)
    expect(s, "project_out", False, sw)
    expect(s, "input_dim", COND_DIM, sw)
    sync = SyncConfig(seq_in=take(s, "sync_seq_dim", sw), seq_out=s.get("sync_output_dim", SYNC_DEFAULT_OUTPUT_DIM))
    sync_extractor = _parse_sync_extractor(s.get("extractor", {}), f"{sw}.extractor")

    t, tw = seen[SPEECH_ID], f"{where}[{SPEECH_ID}].config"
    check_keys(t, {"tts_model_name", "vocab_file", "seq_len", "proj_seq_len", "project_out"}, tw)
    expect(t, "project_out", False, tw)
    speech = SpeechConfig(
        vocab_file=resolve_vocab_file(t.get("vocab_file", RELEASED_VOCAB_PATH), base),
        seq_len=take(t, "seq_len", tw),
        proj_seq_len=take(t, "proj_seq_len", tw),
    )

    m, mw = seen[MEL_ID], f"{where}[{MEL_ID}].config"
    check_keys(
        m,
        keys(
            "mel_spec_type n_fft hop_length win_length n_mel_channels "
            "target_sample_rate mask_ratio_start mask_ratio_end seq_len project_out num_frames"
        ),
        mw,
    )
    expect(m, "mel_spec_type", "mel_features", mw)
    expect(m, "project_out", False, mw)
    mel = MelConfig(
        n_fft=take(m, "n_fft", mw),
        hop_length=take(m, "hop_length", mw),
        win_length=take(m, "win_length", mw),
        n_mels=take(m, "n_mel_channels", mw),
        sample_rate=take(m, "target_sample_rate", mw),
        seq_len=take(m, "seq_len", mw),
        mask_ratio_start=float(take(m, "mask_ratio_start", mw)),
        mask_ratio_end=float(take(m, "mask_ratio_end", mw)),
        num_frames=m.get("num_frames", MEL_NUM_FRAMES),
    )
    return {
        "cond_dim": take(cond, "cond_dim", where),
        "mllm": mllm,
        "sync": sync,
        "sync_extractor": sync_extractor,
        "speech": speech,
        "mel": mel,
    }


def _parse_sync_extractor(d: Mapping[str, Any], where: str) -> SyncExtractorConfig:
    """Our `extractor` extension; an absent field takes the released value."""
    check_keys(d, SyncExtractorConfig.field_names(), where)
    return SyncExtractorConfig(**d)


def _parse_dit(diffusion: Mapping[str, Any]) -> DiTConfig:
    where = "model.diffusion"
    check_keys(diffusion, {"high_level_cond_ids", "low_level_cond_ids", "type", "diffusion_objective", "config"}, where)
    expect(diffusion, "type", "dit", where)
    expect(diffusion, "diffusion_objective", "rectified_flow", where)
    c, cw = take(diffusion, "config", where), f"{where}.config"
    check_keys(
        c,
        keys(
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
        expect(c, key, value, cw)
    return DiTConfig(
        io_channels=take(c, "io_channels", cw),
        embed_dim=take(c, "embed_dim", cw),
        depth=take(c, "depth", cw),
        num_heads=take(c, "num_heads", cw),
        cond_token_dim=take(c, "cond_token_dim", cw),
        global_cond_dim=take(c, "global_cond_dim", cw),
        input_concat_dim=c.get("input_concat_dim", 0),
    )


# --------------------------------------------------------------------------- writing


def write(cfg: AudioOmniConfig, relative_to: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The released schema of `cfg`; paths under `relative_to` are written relative to it."""
    v = cfg.vae
    pretransform = _mel_codec_dict(v) if isinstance(v, MelCodecConfig) else _oobleck_dict(v)
    return {
        "model_type": "diffusion_cond",
        "sample_size": cfg.sample_size,
        "sample_rate": cfg.sample_rate,
        "video_fps": cfg.video_fps,
        "audio_channels": v.io_channels,
        "model": {
            "pretransform": pretransform,
            "conditioning": {"configs": _conditioner_dicts(cfg, relative_to), "cond_dim": cfg.cond_dim},
            "diffusion": {
                "high_level_cond_ids": list(cfg.high_level_cond_ids),
                "low_level_cond_ids": list(cfg.low_level_cond_ids),
                "type": "dit",
                "diffusion_objective": "rectified_flow",
                "config": _dit_dict(cfg),
            },
            "io_channels": cfg.dit.io_channels,
        },
    }


def _dit_dict(cfg: AudioOmniConfig) -> dict[str, Any]:
    d = cfg.dit
    return {
        "io_channels": d.io_channels,
        "embed_dim": d.embed_dim,
        "depth": d.depth,
        "num_heads": d.num_heads,
        "cond_token_dim": d.cond_token_dim,
        "global_cond_dim": d.global_cond_dim,
        "project_cond_tokens": True,
        "transformer_type": "continuous_transformer",
        "condition_mask_type": "cat",
        "video_fps": cfg.video_fps,
        **({"input_concat_dim": d.input_concat_dim} if d.input_concat_dim else {}),
    }


def _conditioner_dicts(cfg: AudioOmniConfig, relative_to: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    sync_cfg: dict[str, Any] = {"sync_seq_dim": cfg.sync.seq_in}
    if cfg.sync.seq_out != SYNC_DEFAULT_OUTPUT_DIM:  # the released file leaves the default out
        sync_cfg["sync_output_dim"] = cfg.sync.seq_out
    sync_cfg["project_out"] = False
    if cfg.sync_extractor != SyncExtractorConfig():  # the released config has no such field
        sync_cfg["extractor"] = cfg.sync_extractor.to_dict()
    vocab = (
        RELEASED_VOCAB_PATH
        if Path(cfg.speech.vocab_file).resolve() == PACKAGED_VOCAB
        else _relative(str(cfg.speech.vocab_file), relative_to)
    )
    m = cfg.mel
    mel_cfg: dict[str, Any] = {
        "mel_spec_type": "mel_features",
        "n_fft": m.n_fft,
        "hop_length": m.hop_length,
        "win_length": m.win_length,
        "n_mel_channels": m.n_mels,
        "target_sample_rate": m.sample_rate,
        "mask_ratio_start": m.mask_ratio_start,
        "mask_ratio_end": m.mask_ratio_end,
        "seq_len": m.seq_len,
    }
    if m.num_frames != MEL_NUM_FRAMES:
        mel_cfg["num_frames"] = m.num_frames
    omni_cfg = {
        "qwen_omni_model_name": _relative(cfg.mllm.model_name_or_path, relative_to),
        "add_sync_feature": False,
        "project_out": False,
        "out_features": MLLM_DEFAULT_HIDDEN_SIZE,
        "pad_length": cfg.mllm.pad_length,
        "layer_idx": cfg.mllm.layer_idx,
    }
    speech_cfg = {
        "tts_model_name": "tts-f5",
        "vocab_file": vocab,
        "seq_len": cfg.speech.seq_len,
        "proj_seq_len": cfg.speech.proj_seq_len,
    }
    return [
        {"id": cid, "type": CONDITIONER_TYPES[cid], "config": c}
        for cid, c in ((OMNI_ID, omni_cfg), (SYNC_ID, sync_cfg), (SPEECH_ID, speech_cfg), (MEL_ID, mel_cfg))
    ]


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


def _mel_codec_dict(v: MelCodecConfig) -> dict[str, Any]:
    return {"type": "mel_codec", "config": {k: getattr(v, k) for k in _MEL_CODEC_FIELDS}}


def _relative(path: str, relative_to: str | os.PathLike[str] | None) -> str:
    if relative_to is None or path.startswith("builtin:"):
        return path
    try:
        return Path(path).resolve().relative_to(Path(relative_to).resolve()).as_posix()
    except ValueError:  # not under relative_to (or a hub id)
        return path
