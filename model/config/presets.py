"""Named model presets: the released model (`full`), the random-weight `tiny` and the trained `small`.

`get_preset` builds one by name (an unknown name lists the known ones); `load_config` takes a
preset name or the path of a released-schema JSON file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from model.config.codec import MelCodecConfig, VAEConfig
from model.config.conditioners import (
    MEL_ID,
    OMNI_ID,
    PACKAGED_VOCAB,
    RELEASED_VOCAB_PATH,
    SPEECH_ID,
    SYNC_ID,
    MelConfig,
    SpeechConfig,
    SyncConfig,
)
from model.config.dit import COND_DIM, DiTConfig
from model.config.mllm import BUILTIN_MLLM_HIDDEN_SIZE, MLLMConfig
from model.config.model import AudioOmniConfig
from model.config.sync_extractor import SyncExtractorConfig

# Presets whose trained weights ship in this package (sampler + thinker, released key names) once
# they exist; see docs/model.md, "The embedded small model".
PACKAGED_WEIGHTS: dict[str, Path] = {
    "small": Path(__file__).resolve().parent.parent / "data" / "small" / "model.safetensors"
}

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


# The test presets' Synchformer extractor: random weights, one block, 768 wide because the sync
# conditioner takes 768-wide features, and frames averaged down to 32 x 32 (2 x 2 patches) so a
# 10 s window (30 segments) takes a fraction of a second on a CPU. Same segmenting as the release:
# 250 frames -> 240 tokens, the sync conditioner's input.
TEST_SYNC_EXTRACTOR = SyncExtractorConfig(
    embed_dim=COND_DIM, depth=1, num_heads=2, mlp_ratio=0.5, patch_size=16, patch_size_temp=2, image_size=32
)


def _full() -> AudioOmniConfig:
    """The released model (Qwen2.5-Omni-3B thinker, 36-block DiT, 10.96 s per generation)."""
    return AudioOmniConfig.from_dict(RELEASED_CONFIG)


def _tiny() -> AudioOmniConfig:
    """Random-weight model for CPU tests and local runs: a 10.03 s stereo 44.1 kHz clip.

    The hard-coded widths (768-wide conditioning, 240-frame sync input, 1723-frame mel window) are
    kept so the same code paths run; everything else is shrunk, the sync extractor included
    (`TEST_SYNC_EXTRACTOR`). The VAE decoder is 8 channels wide
    with a x2048 upsampling like the full model, so 216 latents decode to 442368 samples.
    """
    vae = VAEConfig(
        encoder_channels=16,
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
        sync_extractor=TEST_SYNC_EXTRACTOR,
    )


def _small() -> AudioOmniConfig:
    """A small model trained here on generated sounds (`training/recipes/small.py`, docs/model.md).

    Same clip length, thinker and hard-coded widths as `tiny`; the Oobleck VAE is replaced by the
    fixed log-mel codec (`model.melcodec`: 64 bands up to 11.025 kHz, 216 frames, Griffin-Lim
    decoding), because a waveform VAE does not train from scratch on a CPU in the time this model
    gets. A 3-block DiT of width 128 that also reads the edit's source latent as 64 input-concat
    channels, so output frame k sees source frame k in its own token; the mel conditioner keeps
    tiny's 8 tokens (a summary of the source; the per-frame path is the concat). The fp16 checkpoint (with
    the float32 tiny thinker) stays under 20 MB: the speech conditioner alone, fixed by the released
    layout, is 5.9 M parameters. Without weights the DiT is random, like `tiny`.
    """
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
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
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
        f"{str(preset_or_path)!r} is neither a model preset ({', '.join(sorted(PRESETS))}) nor a JSON config file"
    )
