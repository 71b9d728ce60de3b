"""The Oobleck VAE on diffusers' `AutoencoderOobleck`, with the released checkpoint's key names.

The released checkpoint stores the VAE under `pretransform.model.` with stable-audio-tools'
sequential indices (`encoder.layers.1.layers.0.layers.1.weight_v`); diffusers names the same
modules (`encoder.block.0.res_unit1.conv1.weight_v`). Both use the legacy weight-norm layout
(`weight_g`, `weight_v`), so only names change, plus the Snake `alpha`/`beta` shape ([C] released,
[1, C, 1] in diffusers).

Index layout of the released names, for N stages (N = len(strides)):
  encoder.layers.0            first conv          decoder.layers.0            first conv
  encoder.layers.1..N         down blocks         decoder.layers.1..N         up blocks
  encoder.layers.N+1          Snake               decoder.layers.N+1          Snake
  encoder.layers.N+2          last conv           decoder.layers.N+2          last conv (no bias)
Down block: layers.0-2 residual units (dilation 1, 3, 9), layers.3 Snake, layers.4 strided conv.
Up block: layers.0 Snake, layers.1 transposed conv, layers.2-4 residual units.
Residual unit: layers.0 Snake, layers.1 conv k7, layers.2 Snake, layers.3 conv k1.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderOobleck

from model.config import MelCodecConfig, VAEConfig
from model.melcodec import MelCodec

Codec = AutoencoderOobleck | MelCodec  # what `SamplerPart.vae` holds

RELEASED_PREFIX = "pretransform.model."
STD_FLOOR = 1e-4  # std = softplus(scale) + STD_FLOOR

_CONV_LEAVES = frozenset({"weight_g", "weight_v", "bias"})
_SNAKE_LEAVES = frozenset({"alpha", "beta"})
_RES_UNIT = ("snake1", "conv1", "snake2", "conv2")  # released residual-unit index -> diffusers name
_ENC_BLOCK = ("res_unit1", "res_unit2", "res_unit3", "snake1", "conv1")
_DEC_BLOCK = ("snake1", "conv_t1", "res_unit1", "res_unit2", "res_unit3")

_RELEASED_RE = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_DIFFUSERS_RE = re.compile(r"^(encoder|decoder)\.(conv1|snake1|conv2|block\.(\d+)\.(.+))$")


# --------------------------------------------------------------------------- construction


def build_vae(cfg: VAEConfig | MelCodecConfig, *, sample_rate: int = 44100) -> Codec:
    """An `AutoencoderOobleck` with the layout of `cfg` (random weights, eval mode), or the fixed
    `MelCodec` for a `MelCodecConfig`.

    Build it under `torch.device("meta")` to enumerate shapes without memory.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
    if isinstance(cfg, MelCodecConfig):
        return MelCodec(cfg, sample_rate=sample_rate).eval()
    with warnings.catch_warnings():
        # diffusers builds its convs with the deprecated `torch.nn.utils.weight_norm`; that legacy
        # layout is exactly what the released checkpoint stores, so the warning is noise here.
        warnings.filterwarnings("ignore", message=".*torch.nn.utils.weight_norm.*", category=FutureWarning)
        vae = AutoencoderOobleck(
            encoder_hidden_size=cfg.encoder_channels,
            downsampling_ratios=list(cfg.strides),
            channel_multiples=list(cfg.c_mults),
            decoder_channels=cfg.decoder_channels,
            decoder_input_channels=cfg.latent_dim,
            audio_channels=cfg.io_channels,
            sampling_rate=sample_rate,
        )
        if cfg.encoder_latent_dim != cfg.encoder_channels:
            _widen_encoder_output(vae, cfg.encoder_latent_dim)
    return vae.eval()


def _widen_encoder_output(vae: AutoencoderOobleck, out_channels: int) -> None:
    """Give the encoder's closing conv `out_channels` outputs (the released `encoder.latent_dim`).

    diffusers ties that width to the encoder's first width (`encoder_hidden_size`); the released
    schema does not. Only this conv changes: same kernel, padding and weight-norm layout, so its
    released names (`encoder.layers.<N+2>.weight_g/_v`, `bias`) are unchanged.
    """
    old = vae.encoder.conv2
    conv = torch.nn.Conv1d(old.in_channels, out_channels, kernel_size=old.kernel_size, padding=old.padding)
    vae.encoder.conv2 = torch.nn.utils.weight_norm(conv)


def num_stages(vae: Codec) -> int | None:
    """Down/up-sampling stages of a built VAE (None for the mel codec, whose keys need none)."""
    return None if isinstance(vae, MelCodec) else len(vae.encoder.block)


# --------------------------------------------------------------------------- key names


def released_to_diffusers(key: str) -> str:
    """Rename a released VAE key (after `pretransform.model.`) to its diffusers name.

    The released index of the closing Snake / conv depends on the number of stages, but a direct
    leaf under `layers.{k}` is unambiguous: Snake leaves are the closing Snake, conv leaves at
    k > 0 the closing conv.
    """
    m = _RELEASED_RE.match(key)
    if m is None:
        raise ValueError(f"not a released VAE key: {key!r} (expected '(encoder|decoder).layers.<i>....')")
    side, k, rest = m.group(1), int(m.group(2)), m.group(3)
    if rest in _CONV_LEAVES:
        return f"{side}.{'conv1' if k == 0 else 'conv2'}.{rest}"
    if rest in _SNAKE_LEAVES and k > 0:
        return f"{side}.snake1.{rest}"
    bm = re.match(r"^layers\.(\d+)\.(.+)$", rest)
    if k == 0 or bm is None:
        raise ValueError(f"not a released VAE key: {key!r}")
    j, inner = int(bm.group(1)), bm.group(2)
    names = _ENC_BLOCK if side == "encoder" else _DEC_BLOCK
    if j >= len(names):
        raise ValueError(f"not a released VAE key: {key!r} (block index {j} > {len(names) - 1})")
    name = names[j]
    if name.startswith("res_unit"):
        um = re.match(r"^layers\.(\d+)\.(\w+)$", inner)
        if um is None or int(um.group(1)) >= len(_RES_UNIT):
            raise ValueError(f"not a released VAE key: {key!r}")
        sub, leaf = _RES_UNIT[int(um.group(1))], um.group(2)
        _check_leaf(key, sub, leaf)
        return f"{side}.block.{k - 1}.{name}.{sub}.{leaf}"
    _check_leaf(key, name, inner)
    return f"{side}.block.{k - 1}.{name}.{inner}"


def diffusers_to_released(key: str, *, num_stages: int) -> str:
    """Inverse of `released_to_diffusers`; `num_stages` places the closing Snake and conv."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    m = _DIFFUSERS_RE.match(key.rsplit(".", 1)[0]) if "." in key else None
    if m is None:
        raise ValueError(f"not a diffusers Oobleck key: {key!r}")
    side, module, leaf = m.group(1), m.group(2), key.rsplit(".", 1)[1]
    if module in ("conv1", "snake1", "conv2"):
        _check_leaf(key, module, leaf)
        index = {"conv1": 0, "snake1": num_stages + 1, "conv2": num_stages + 2}[module]
        return f"{side}.layers.{index}.{leaf}"
    b, inner = int(m.group(3)), m.group(4)
    if b >= num_stages:
        raise ValueError(f"{key!r} names block {b} but the VAE has {num_stages} stages")
    names = _ENC_BLOCK if side == "encoder" else _DEC_BLOCK
    head, _, sub = inner.partition(".")
    if head not in names:
        raise ValueError(f"not a diffusers Oobleck key: {key!r}")
    j = names.index(head)
    if head.startswith("res_unit"):
        if sub not in _RES_UNIT:
            raise ValueError(f"not a diffusers Oobleck key: {key!r}")
        _check_leaf(key, sub, leaf)
        return f"{side}.layers.{b + 1}.layers.{j}.layers.{_RES_UNIT.index(sub)}.{leaf}"
    if sub:
        raise ValueError(f"not a diffusers Oobleck key: {key!r}")
    _check_leaf(key, head, leaf)
    return f"{side}.layers.{b + 1}.layers.{j}.{leaf}"


def _check_leaf(key: str, module: str, leaf: str) -> None:
    allowed = _SNAKE_LEAVES if module.startswith("snake") else _CONV_LEAVES
    if leaf not in allowed:
        raise ValueError(f"{key!r}: {module} has no parameter {leaf!r} (expected one of {sorted(allowed)})")


def released_tensor_to_diffusers(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Snake `alpha`/`beta` are [C] in the release and [1, C, 1] in diffusers; others pass through."""
    if diffusers_key.endswith((".alpha", ".beta")) and tensor.ndim == 1:
        return tensor.reshape(1, -1, 1)
    return tensor


def diffusers_tensor_to_released(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of `released_tensor_to_diffusers`."""
    if diffusers_key.endswith((".alpha", ".beta")) and tensor.ndim == 3:
        return tensor.reshape(-1)
    return tensor


# --------------------------------------------------------------------------- state dicts


def load_released_vae_state(vae: AutoencoderOobleck, sd_released: Mapping[str, torch.Tensor]) -> None:
    """Load released-name VAE weights (keys after `pretransform.model.`; the prefix is also
    accepted) into `vae`, strictly. Missing, unexpected or mis-shaped keys raise `ValueError`.

    Tensors are cast to the VAE's dtype; a VAE built on the meta device receives them (float32).
    """
    if any(k.endswith(".weight") for k in vae.state_dict()):
        raise ValueError("this VAE has folded weight norm; load the released weights before fold_weight_norm")
    target = vae.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in sd_released.items():
        short = key.removeprefix(RELEASED_PREFIX)
        try:
            dkey = released_to_diffusers(short)
        except ValueError:
            unexpected.append(key)
            continue
        if dkey not in target:
            unexpected.append(key)
            continue
        mapped[dkey] = released_tensor_to_diffusers(dkey, tensor)
    missing = sorted(set(target) - set(mapped))
    bad_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if v.shape != target[k].shape
    ]
    if missing or unexpected or bad_shape:
        raise ValueError(
            "released VAE state does not match the model: "
            f"{len(missing)} missing {missing[:20]}, {len(unexpected)} unexpected {sorted(unexpected)[:20]}, "
            f"{len(bad_shape)} shape mismatches {bad_shape[:20]}"
        )
    on_meta = any(p.is_meta for p in vae.parameters())
    if on_meta:
        mapped = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in mapped.items()}
    vae.load_state_dict(mapped, strict=True, assign=on_meta)


def released_vae_state(vae: AutoencoderOobleck) -> dict[str, torch.Tensor]:
    """The VAE's weights under released names (without `pretransform.model.`), Snake params as [C]."""
    n = num_stages(vae)
    out: dict[str, torch.Tensor] = {}
    for dkey, tensor in vae.state_dict().items():
        if dkey.endswith(".weight"):
            raise ValueError(f"{dkey!r}: weight norm was folded; the released layout needs weight_g/weight_v")
        out[diffusers_to_released(dkey, num_stages=n)] = diffusers_tensor_to_released(dkey, tensor)
    return out


def fold_weight_norm(vae: AutoencoderOobleck) -> AutoencoderOobleck:
    """Replace every weight-norm reparametrisation by its weight `g * v / ||v||`, computed once.

    Same arithmetic as the per-call hook, so outputs are unchanged; it saves the norm per forward.
    Do it after loading weights (the released layout needs `weight_g` / `weight_v`).
    """
    for module in vae.modules():
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
    return vae


# --------------------------------------------------------------------------- encode / decode


def _param(vae: AutoencoderOobleck) -> torch.Tensor:
    p = next(vae.parameters())
    if p.dtype != torch.float32:
        raise ValueError(f"the VAE runs in float32 only (reference numerics); its weights are {p.dtype}")
    return p


def decode(vae: Codec, latents: torch.Tensor, *, batch_chunk: int | None = None) -> torch.Tensor:
    """Latents (B, C, T) -> waveform (B, audio_channels, T * downsampling_ratio), float32.

    Runs in float32 with autocast disabled (latents are unscaled: the release's pretransform scale
    is 1.0). `batch_chunk` decodes that many items at a time to bound activation memory. Call it
    under `torch.inference_mode()` at inference.
    """
    if isinstance(vae, MelCodec):
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return vae.decode(latents.float())
    channels = vae.config.decoder_input_channels
    if latents.ndim != 3 or latents.shape[1] != channels:
        raise ValueError(f"latents must be (B, {channels}, T), got {tuple(latents.shape)}")
    if batch_chunk is not None and batch_chunk < 1:
        raise ValueError(f"batch_chunk must be >= 1 or None, got {batch_chunk}")
    p = _param(vae)
    z = latents.to(device=p.device, dtype=torch.float32)  # (B, C, T)
    chunk = batch_chunk or z.shape[0]
    with torch.autocast(device_type=p.device.type, enabled=False):
        parts = [vae.decoder(z[i : i + chunk]) for i in range(0, z.shape[0], chunk)]  # (b, A, T * r)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def encode_raw(vae: AutoencoderOobleck, wav: torch.Tensor) -> torch.Tensor:
    """Waveform (B, audio_channels, N) -> encoder output (B, 2 * latent_dim, N / ratio), float32.

    N must be a multiple of the downsampling ratio (the encoder is not length-exact otherwise).
    """
    ratio = int(torch.tensor(vae.config.downsampling_ratios).prod())
    audio_channels = vae.config.audio_channels
    if wav.ndim != 3 or wav.shape[1] != audio_channels:
        raise ValueError(f"wav must be (B, {audio_channels}, N), got {tuple(wav.shape)}")
    if wav.shape[-1] == 0 or wav.shape[-1] % ratio:
        raise ValueError(f"wav length {wav.shape[-1]} must be a positive multiple of {ratio}")
    p = _param(vae)
    with torch.autocast(device_type=p.device.type, enabled=False):
        return vae.encoder(wav.to(device=p.device, dtype=torch.float32))  # (B, 2C, L)


def encode_moments(vae: Codec, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveform (B, A, N) -> (mean, std), each (B, latent_dim, N / ratio).

    The encoder output splits into mean (first half of the channels) and scale (second half);
    std = softplus(scale) + 1e-4. The mel codec is deterministic: std is zero.
    """
    if isinstance(vae, MelCodec):
        with torch.autocast(device_type=wav.device.type, enabled=False):
            mean = vae.encode(wav.float())
        return mean, torch.zeros_like(mean)
    mean, scale = encode_raw(vae, wav).chunk(2, dim=1)  # (B, C, L) each
    return mean, F.softplus(scale) + STD_FLOOR


def encode_sample(
    vae: Codec,
    wav: torch.Tensor,
    eps: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The release's stochastic encode: mean + std * eps, eps ~ N(0, 1) drawn here when not given.

    For a deterministic latent use `encode_moments(...)[0]`.
    """
    mean, std = encode_moments(vae, wav)  # (B, C, L)
    if eps is None:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    elif eps.shape != mean.shape:
        raise ValueError(f"eps must have the latent shape {tuple(mean.shape)}, got {tuple(eps.shape)}")
    return mean + std * eps.to(device=mean.device, dtype=mean.dtype)
