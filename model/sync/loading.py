"""Synchformer weights: read the released file, keep the visual branch, load it strictly.

The release ships `synchformer_state_dict.pth`, a plain torch state dict of the whole Synchformer
(the visual branch under `vfeat_extractor.`, plus an audio branch and a sync head this system does
not use). As in the reference, only the `vfeat_extractor.*` tensors are kept and they must match
the extractor exactly. `convert-checkpoint --synchformer` writes them as the `sync` part
(`sync.safetensors`, released names) beside the model's other parts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from model.checkpoint import PART_FILES, SYNC_PREFIX, file_sha256, load_into, load_state_dict, write_part_file
from model.sync.extractor import SyncExtractor

__all__ = ["SYNC_PREFIX", "convert_synchformer", "load_extractor_weights", "read_sync_weights", "visual_branch"]


def visual_branch(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `vfeat_extractor.*` tensors of a Synchformer state dict (released names)."""
    return {k: v for k, v in sd.items() if k.startswith(SYNC_PREFIX)}


def read_sync_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The extractor's tensors (released names) held by `path`; empty when it holds none.

    `path` is the released `synchformer_state_dict.pth` (read with `weights_only=True`), a
    safetensors file with the same names, a folder written by `convert-checkpoint` (its
    `sync.safetensors`), or any other checkpoint the loader reads (a model checkpoint: none).
    """
    p = Path(path)
    if p.is_dir():
        f = p / PART_FILES["sync"]
        return load_state_dict(f) if f.is_file() else {}
    return visual_branch(load_state_dict(p))


def load_extractor_weights(extractor: SyncExtractor, sd: Mapping[str, torch.Tensor]) -> None:
    """Load a Synchformer state dict into `extractor` strictly, in float32.

    Keys outside `vfeat_extractor.` (the audio branch, the sync head) are ignored; a missing,
    unexpected or mis-shaped `vfeat_extractor.*` key raises `CheckpointMismatchError` naming it.
    """
    load_into(extractor, visual_branch(sd), part="sync", dtype=torch.float32)


def convert_synchformer(src: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> Path:
    """Write the visual branch of a Synchformer file as `dst_dir/sync.safetensors`; its path.

    A file without any `vfeat_extractor.*` tensor is refused (`ValueError`): it is not a
    Synchformer state dict.
    """
    src_p = Path(src)
    if src_p.is_dir():
        raise ValueError(f"{src_p} is a folder; --synchformer takes the released synchformer_state_dict.pth")
    sd = visual_branch(load_state_dict(src_p))
    if not sd:
        raise ValueError(f"{src_p} holds no '{SYNC_PREFIX}*' tensors; is it synchformer_state_dict.pth?")
    return write_part_file(sd, "sync", Path(dst_dir), source_name=src_p.name, source_sha256=file_sha256(src_p))
