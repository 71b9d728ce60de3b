"""Released checkpoint <-> our modules: key names, the two-part split, loading and conversion.

The release is one `model.ckpt` whose `state_dict` holds the whole stable-audio-tools wrapper.
The job system runs two worker pools, so the weights split into two parts:

* `encoder`: the frozen Qwen2.5-Omni thinker (the encoder module's child `thinker`);
* `sampler`: the DiT, the small conditioners and the VAE (children `dit`, `omni_proj`, `sync`,
  `speech`, `mel`, `vae`).

A third part, `sync`, is the Synchformer visual extractor (`model.sync`), which the release ships
as its own `synchformer_state_dict.pth`; its names (`vfeat_extractor.*`) are the same in the
module, and `model.sync.loading` reads and converts that file.

`PREFIX_MAP` is the one table of released prefix <-> internal prefix <-> part. Names below a prefix
are unchanged, except the VAE, which is renamed to diffusers' `AutoencoderOobleck` names
(see `model.vae`). Converted checkpoints are two safetensors files, `encoder.safetensors` and
`sampler.safetensors`, that keep the released names so any tool that knows the release reads them.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model.config import AudioOmniConfig
from model.melcodec import CODEC_KEYS
from model.vae import (
    diffusers_tensor_to_released,
    diffusers_to_released,
    num_stages,
    released_tensor_to_diffusers,
    released_to_diffusers,
)

Part = Literal["encoder", "sampler", "sync"]
PARTS: tuple[Part, ...] = ("encoder", "sampler", "sync")
MODEL_PARTS: tuple[Part, ...] = ("encoder", "sampler")  # the parts of the released model.ckpt
PART_FILES: dict[Part, str] = {
    "encoder": "encoder.safetensors",
    "sampler": "sampler.safetensors",
    "sync": "sync.safetensors",
}
SYNC_PREFIX = "vfeat_extractor."  # the Synchformer visual branch, in its own released file
PART_FORMAT = "audio-omni-part/1"
TORCH_SUFFIXES = frozenset({".ckpt", ".pt", ".pth"})

# (released prefix, internal prefix, part). Order matters: the thinker prefix is inside the
# omni conditioner's, so it is matched first.
PREFIX_MAP: tuple[tuple[str, str, Part], ...] = (
    ("conditioner.conditioners.omni_prompt.model.thinker.", "thinker.", "encoder"),
    ("conditioner.conditioners.omni_prompt.", "omni_proj.", "sampler"),
    ("conditioner.conditioners.sync_feature.", "sync.", "sampler"),
    ("conditioner.conditioners.speech_prompt.", "speech.", "sampler"),
    ("conditioner.conditioners.audio_input_prompt.", "mel.", "sampler"),
    ("model.model.", "dit.", "sampler"),
    ("pretransform.model.", "vae.", "sampler"),
    (SYNC_PREFIX, SYNC_PREFIX, "sync"),
)
_VAE_INTERNAL = "vae."


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the module (strict loading)."""

    def __init__(self, part: str, missing: list[str], unexpected: list[str], shape_mismatches: list[str]) -> None:
        self.part = part
        self.missing = missing
        self.unexpected = unexpected
        self.shape_mismatches = shape_mismatches
        lines = [f"checkpoint does not match the {part} module:"]
        for label, items in (
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("shape mismatches", shape_mismatches),
        ):
            if items:
                more = f" (+{len(items) - 20} more)" if len(items) > 20 else ""
                lines.append(f"  {len(items)} {label}: {', '.join(items[:20])}{more}")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- names


def _match_released(key: str) -> tuple[str, str, Part]:
    for released, internal, part in PREFIX_MAP:
        if key.startswith(released):
            return released, internal, part
    known = ", ".join(r for r, _, _ in PREFIX_MAP)
    raise ValueError(f"checkpoint key {key!r} has no known prefix; known prefixes: {known}")


def part_of(released_key: str) -> Part:
    """Which part holds a released key: `"encoder"` (thinker), `"sampler"` or `"sync"` (Synchformer)."""
    return _match_released(released_key)[2]


def released_to_internal(key: str) -> str:
    """Released checkpoint name -> name in our encoder/sampler module."""
    released, internal, _ = _match_released(key)
    rest = key[len(released) :]
    if internal == _VAE_INTERNAL and rest not in CODEC_KEYS:
        rest = released_to_diffusers(rest)
    return internal + rest


def internal_to_released(key: str, *, vae_num_stages: int | None = None) -> str:
    """Name in our module -> released checkpoint name.

    Oobleck VAE keys need `vae_num_stages` (the closing Snake/conv indices depend on it); the mel
    codec's keys keep their names.
    """
    for released, internal, _ in PREFIX_MAP:
        if key.startswith(internal):
            rest = key[len(internal) :]
            if internal == _VAE_INTERNAL and rest not in CODEC_KEYS:
                if vae_num_stages is None:
                    raise ValueError(f"internal_to_released({key!r}) needs vae_num_stages for a VAE key")
                rest = diffusers_to_released(rest, num_stages=vae_num_stages)
            return released + rest
    known = ", ".join(i for _, i, _ in PREFIX_MAP)
    raise ValueError(f"module key {key!r} has no known prefix; known prefixes: {known}")


def _check_part(part: str) -> Part:
    if part not in PARTS:
        raise ValueError(f"unknown checkpoint part {part!r}; known parts: {', '.join(PARTS)}")
    return part  # type: ignore[return-value]


# --------------------------------------------------------------------------- reading


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, under released names, on the CPU.

    `path` is a released `.ckpt` / `.pt` / `.pth` (torch pickle, read with `weights_only=True`;
    its `"state_dict"` entry when present), a flat `.safetensors` file, or a folder written by
    `convert_checkpoint` (its part files are merged). Pickles are memory-mapped where possible, so
    tensors are paged in from disk as they are used.
    """
    p = Path(path)
    if p.is_dir():
        files = [(part, p / name) for part, name in PART_FILES.items() if (p / name).is_file()]
        if not files:
            raise FileNotFoundError(f"{p} holds none of {sorted(PART_FILES.values())}")
        out: dict[str, torch.Tensor] = {}
        for part, f in files:
            out.update(_load_part_file(f, part))
        return out
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(p, device="cpu")
        except SafetensorError as exc:
            raise ValueError(f"{p} is not a readable safetensors file: {exc}") from exc
    if suffix in TORCH_SUFFIXES:
        return _load_torch(p)
    raise ValueError(
        f"unsupported checkpoint format {suffix or '(no suffix)'!r} for {p}; "
        f"expected one of {sorted(TORCH_SUFFIXES | {'.safetensors'})} or a converted folder"
    )


def load_part_state_dict(path: str | os.PathLike[str], part: str) -> dict[str, torch.Tensor]:
    """Only the tensors of one part (released names). From a converted folder or a safetensors
    file this reads just that part's tensors; a pickle is read (memory-mapped) and filtered."""
    part = _check_part(part)
    p = Path(path)
    if p.is_dir():
        f = p / PART_FILES[part]
        if not f.is_file():
            raise FileNotFoundError(f"{p} has no {PART_FILES[part]}")
        return _load_part_file(f, part)
    if p.suffix.lower() == ".safetensors" and p.is_file():
        try:
            with safe_open(p, framework="pt", device="cpu") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys() if part_of(k) == part}  # noqa: SIM118
        except SafetensorError as exc:
            raise ValueError(f"{p} is not a readable safetensors file: {exc}") from exc
    return split_parts(load_state_dict(p))[part]


def _load_torch(p: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Legacy (non-zip) torch.save format cannot be memory-mapped.
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{p} holds more than tensors and plain containers (weights_only load refused it): {exc}"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise ValueError(f"{p} is not a readable torch checkpoint: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p} does not hold a state dict (got {type(obj).__name__})")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(
                f"{p}: entry {k!r} is a {type(v).__name__}, not a tensor; a state dict maps names to tensors"
            )
    return dict(obj)


def _load_part_file(f: Path, part: Part) -> dict[str, torch.Tensor]:
    try:
        with safe_open(f, framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            if meta.get("part", part) != part:
                raise ValueError(f"{f} is labelled part {meta['part']!r}, expected {part!r}")
            sd = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ValueError(f"{f} is not a readable safetensors file: {exc}") from exc
    stray = [k for k in sd if part_of(k) != part]
    if stray:
        raise ValueError(f"{f} ({part} part) holds {len(stray)} keys of another part, e.g. {stray[0]!r}")
    return sd


def split_parts(sd: Mapping[str, torch.Tensor]) -> dict[Part, dict[str, torch.Tensor]]:
    """Split a released state dict into `{"encoder": ..., "sampler": ...}` (names unchanged), plus
    `"sync"` when it holds Synchformer tensors.

    A key with no known prefix raises `ValueError`.
    """
    parts: dict[Part, dict[str, torch.Tensor]] = {part: {} for part in MODEL_PARTS}
    for key, tensor in sd.items():
        parts.setdefault(part_of(key), {})[key] = tensor
    return parts


# --------------------------------------------------------------------------- loading into modules


def load_into(
    module: torch.nn.Module,
    sd_released: Mapping[str, torch.Tensor],
    *,
    part: str,
    dtype: torch.dtype | None = None,
) -> None:
    """Load the `part` tensors of a released state dict into `module`, strictly.

    Keys of the other part are ignored, so a whole checkpoint may be passed. Every persistent
    parameter and buffer of the module (e.g. the DiT's LayerNorm `beta` and RoPE `inv_freq`) must be
    present with the right shape, and nothing else; otherwise `CheckpointMismatchError` lists the
    missing, unexpected and mis-shaped keys (released names).

    `dtype`: when given, floating tensors end up in it (`module.to(dtype)` first, like
    `nn.Module.to`); otherwise they take the module's current dtypes. A module built on the meta
    device receives the checkpoint tensors themselves (no second copy); its non-persistent buffers
    must then be real already, else `ValueError`.
    """
    part = _check_part(part)
    target = module.state_dict()
    vae_stages = num_stages(module.vae) if part == "sampler" and hasattr(module, "vae") else None

    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in sd_released.items():
        try:
            if part_of(key) != part:
                continue
            ikey = released_to_internal(key)
        except ValueError:
            unexpected.append(key)
            continue
        if ikey not in target:
            unexpected.append(key)
            continue
        if ikey.startswith(_VAE_INTERNAL):
            tensor = released_tensor_to_diffusers(ikey, tensor)
        mapped[ikey] = tensor

    def released_name(ikey: str) -> str:
        try:
            return internal_to_released(ikey, vae_num_stages=vae_stages)
        except ValueError:
            return f"<module key {ikey}>"

    missing = sorted(released_name(k) for k in set(target) - set(mapped))
    shape_mismatches = [
        f"{released_name(k)}: checkpoint {list(_released_shape(k, v))} vs module {list(_released_shape(k, target[k]))}"
        for k, v in mapped.items()
        if v.shape != target[k].shape
    ]
    if missing or unexpected or shape_mismatches:
        raise CheckpointMismatchError(part, missing, sorted(unexpected), shape_mismatches)

    on_meta = any(t.is_meta for t in target.values())
    if not on_meta:
        if dtype is not None:
            module.to(dtype=dtype)
        # Copy into the existing tensors: keeps device, dtype and any weight tying.
        module.load_state_dict(mapped, strict=True)
        return
    prepared = {}
    for k, v in mapped.items():
        want = dtype if dtype is not None and v.is_floating_point() else target[k].dtype
        prepared[k] = v.to(dtype=want) if v.dtype != want else v
    module.load_state_dict(prepared, strict=True, assign=True)
    still_meta = [n for n, b in module.named_buffers() if b.is_meta]
    if still_meta:
        raise ValueError(
            f"non-persistent buffers are still on the meta device after loading: {still_meta[:20]}; "
            "create them on a real device before load_into"
        )


def _released_shape(ikey: str, t: torch.Tensor) -> torch.Size:
    return diffusers_tensor_to_released(ikey, t).shape if ikey.startswith(_VAE_INTERNAL) else t.shape


# --------------------------------------------------------------------------- conversion


def file_sha256(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 24) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _lazy_tensors(src: Path) -> Iterator[tuple[list[str], Mapping[str, torch.Tensor] | None, object]]:
    """(keys, mapping or None, safetensors handle or None) without reading every tensor into RAM."""
    if src.suffix.lower() == ".safetensors":
        try:
            with safe_open(src, framework="pt", device="cpu") as fh:
                yield list(fh.keys()), None, fh
        except SafetensorError as exc:
            raise ValueError(f"{src} is not a readable safetensors file: {exc}") from exc
    else:
        sd = load_state_dict(src)  # memory-mapped pickle
        yield list(sd), sd, None


def convert_checkpoint(src: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> dict[Part, Path]:
    """Write a released checkpoint as `encoder.safetensors` and `sampler.safetensors` in `dst_dir`.

    Names stay as released; tensors are made contiguous; each file's metadata records the part and
    the source's sha256. One part is gathered at a time from a memory-mapped source, and each file
    is written under a temporary name and renamed, so a crash leaves no half-written part. Returns
    the written paths by part (a part with no tensors is not written).
    """
    src_p, dst = Path(src), Path(dst_dir)
    if src_p.is_dir():
        raise ValueError(f"{src_p} is a folder; convert_checkpoint takes a released checkpoint file")
    if not src_p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src_p}")
    sha = file_sha256(src_p)
    dst.mkdir(parents=True, exist_ok=True)
    written: dict[Part, Path] = {}
    with _lazy_tensors(src_p) as (keys, mapping, handle):
        by_part: dict[Part, list[str]] = {part: [] for part in PARTS}
        for k in keys:
            by_part[part_of(k)].append(k)
        for part in PARTS:
            if not by_part[part]:
                continue
            tensors: dict[str, torch.Tensor] = {}
            seen_storage: set[int] = set()
            for k in by_part[part]:
                t = mapping[k] if mapping is not None else handle.get_tensor(k)  # type: ignore[attr-defined]
                t = t.contiguous()
                # safetensors refuses tensors that share memory (tied weights in a pickle): copy those.
                ident = t.untyped_storage().data_ptr()
                if ident in seen_storage:
                    t = t.clone()
                seen_storage.add(ident)
                tensors[k] = t
            written[part] = write_part_file(tensors, part, dst, source_name=src_p.name, source_sha256=sha)
            del tensors
    return written


def write_part_file(
    tensors: Mapping[str, torch.Tensor], part: Part, dst_dir: Path, *, source_name: str, source_sha256: str
) -> Path:
    """Write one part's tensors (released names) as `dst_dir/<part file>`; its path.

    The metadata records the part and its source; the file is written under a temporary name and
    renamed, so a crash leaves no half-written part.
    """
    part = _check_part(part)
    stray = [k for k in tensors if part_of(k) != part]
    if stray:
        raise ValueError(f"{len(stray)} tensors do not belong to the {part} part, e.g. {stray[0]!r}")
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = dst_dir / PART_FILES[part]
    tmp = out.with_name(out.name + ".tmp")
    save_file(
        {k: t.contiguous() for k, t in tensors.items()},
        tmp,
        metadata={
            "format": PART_FORMAT,
            "part": part,
            "source_name": source_name,
            "source_sha256": source_sha256,
            "num_tensors": str(len(tensors)),
        },
    )
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- sizes the schema omits

MEL_FRAMES_KEY = "conditioner.conditioners.audio_input_prompt.proj_sequence_features.weight"


def fit_config_to_weights(config: AudioOmniConfig, sd: Mapping[str, torch.Tensor]) -> AudioOmniConfig:
    """`config` with the sizes the released schema does not record taken from the weights.

    That is the mel conditioner's frame count (the in-features of its sequence projection, which
    the reference hard-codes). Every other shape follows from the config, and strict loading
    checks it.
    """
    weight = sd.get(MEL_FRAMES_KEY)
    if weight is None or weight.ndim != 2 or int(weight.shape[1]) == config.mel.num_frames:
        return config
    return replace(config, mel=replace(config.mel, num_frames=int(weight.shape[1])))


# --------------------------------------------------------------------------- layout


def released_layout(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """`(released name, shape, "param" | "buffer")` of every tensor `module` saves, in module order.

    Works on a module built on the meta device, so the full model's layout costs no memory.
    """
    vae_stages = num_stages(module.vae) if hasattr(module, "vae") else None
    params = {name for name, _ in module.named_parameters()}
    rows = []
    for ikey, tensor in module.state_dict(keep_vars=True).items():
        shape = _released_shape(ikey, tensor)
        rows.append(
            (
                internal_to_released(ikey, vae_num_stages=vae_stages),
                tuple(shape),
                "param" if ikey in params else "buffer",
            )
        )
    return rows


def released_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor `module` saves, under its released name and in its released shape (the inverse of
    `load_into`): what a checkpoint of this part would hold."""
    vae_stages = num_stages(module.vae) if hasattr(module, "vae") else None
    return {
        internal_to_released(ikey, vae_num_stages=vae_stages): (
            diffusers_tensor_to_released(ikey, t) if ikey.startswith(_VAE_INTERNAL) else t
        )
        for ikey, t in module.state_dict().items()
    }
