"""Where dataset files live and how a shard is laid out.

A dataset is a folder or an `s3://bucket/prefix` holding::

    settings.json                    the synthesis settings (a resumed run must match them)
    shards/shard-00000.safetensors   P pairs: int16 clips + JSON metadata (see `write_shard`)
    features/<tag>/shard-00000.safetensors   precomputed conditioning of that shard (precompute.py)
    manifest.json                    shard list and counts, written when a run completes

Sources (foreground / background sound folders) are a local folder or an `s3://bucket/prefix`.
No torch here: shards are written with safetensors' numpy API.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

if TYPE_CHECKING:
    from orchestrator.storage import Storage

AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg"})
SHARD_FORMAT = "audio-omni-editpairs/1"
SETTINGS_KEY = "settings.json"
MANIFEST_KEY = "manifest.json"
S3_ENDPOINT_ENV = "AUDIO_OMNI_S3_ENDPOINT"
INT16_SCALE = 32767.0
META_KEY = "audio_omni"


def shard_key(index: int) -> str:
    return f"shards/shard-{index:05d}.safetensors"


def features_key(tag: str, index: int) -> str:
    return f"features/{tag}/shard-{index:05d}.safetensors"


# --------------------------------------------------------------------------- locations


def _s3_client(endpoint_url: str | None) -> Any:  # a boto3 S3 client (boto3 ships no types)
    from orchestrator.storage import make_s3_client

    return make_s3_client(endpoint_url=endpoint_url or os.environ.get(S3_ENDPOINT_ENV), addressing_style="path")


def open_storage(uri: str, *, endpoint_url: str | None = None) -> Storage:
    """A `Storage` for a dataset location: `s3://bucket/prefix` or a local folder (created)."""
    from orchestrator.storage import LocalStorage, S3Storage

    if not isinstance(uri, str) or not uri:
        raise ValueError(f"dataset location must be a folder or s3://bucket/prefix, got {uri!r}")
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return S3Storage(parts.netloc, client=_s3_client(endpoint_url), prefix=parts.path.strip("/"))
    if parts.scheme not in ("", "file"):
        raise ValueError(f"dataset location {uri!r}: only local folders and s3:// are supported")
    return LocalStorage(parts.path if parts.scheme == "file" else uri)


@dataclass(frozen=True)
class SourceTree:
    """A read-only tree of audio files: a local folder or an `s3://bucket/prefix`."""

    uri: str
    endpoint_url: str | None = None

    def _s3(self) -> tuple[str, str]:
        parts = urlsplit(self.uri)
        prefix = parts.path.strip("/")
        return parts.netloc, (prefix + "/") if prefix else ""

    @property
    def is_s3(self) -> bool:
        return urlsplit(self.uri).scheme == "s3"

    def list_audio(self) -> list[str]:
        """Relative paths (posix, sorted) of every audio file below the root."""
        if self.is_s3:
            bucket, prefix = self._s3()
            client = _s3_client(self.endpoint_url)
            names: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix) :]
                    if Path(rel).suffix.lower() in AUDIO_EXTS:
                        names.append(rel)
            return sorted(names)
        root = Path(self.uri)
        if not root.is_dir():
            raise ValueError(f"source folder {self.uri!r} does not exist or is not a folder")
        return sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith(".")
        )

    def read(self, rel: str) -> bytes:
        if self.is_s3:
            bucket, prefix = self._s3()
            obj = _s3_client(self.endpoint_url).get_object(Bucket=bucket, Key=prefix + rel)
            return obj["Body"].read()
        return (Path(self.uri) / rel).read_bytes()


# --------------------------------------------------------------------------- shard format


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * INT16_SCALE), -32768, 32767).astype(np.int16)


def from_int16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / INT16_SCALE


def encode_shard(
    *,
    background: np.ndarray,
    mixture: np.ndarray,
    event: np.ndarray,
    pairs: list[dict[str, Any]],
    header: Mapping[str, Any],
) -> bytes:
    """Serialise P pairs. Clips are (P, N) float in [-1, 1], stored as int16 mono.

    Examples derived from pair p (see `examples_of`): add (bg -> mix), remove (mix -> bg),
    extract (mix -> event), text_to_audio (silence -> event).
    """
    if not (background.shape == mixture.shape == event.shape) or background.ndim != 2:
        raise ValueError(f"clips must be (P, N) of one shape, got {background.shape}, {mixture.shape}, {event.shape}")
    if background.shape[0] != len(pairs):
        raise ValueError(f"{background.shape[0]} clips for {len(pairs)} pair records")
    # One metadata entry: safetensors writes its metadata map in hash order, so several entries would
    # make equal shards differ byte-wise and break the byte-for-byte determinism of a rerun.
    meta = {META_KEY: json.dumps({"format": SHARD_FORMAT, "header": dict(header), "pairs": pairs}, sort_keys=True)}
    return st_save({"background": to_int16(background), "mixture": to_int16(mixture), "event": to_int16(event)}, meta)


@dataclass
class Shard:
    """A decoded shard: float32 clips (P, N) and per-pair parameter records."""

    background: np.ndarray
    mixture: np.ndarray
    event: np.ndarray
    pairs: list[dict[str, Any]]
    header: dict[str, Any]


def decode_shard(data: bytes) -> Shard:
    tensors = st_load(data)
    meta = json.loads(_metadata(data).get(META_KEY, "{}"))
    if meta.get("format") != SHARD_FORMAT:
        raise ValueError(f"not an edit-pair shard (format {meta.get('format')!r}, expected {SHARD_FORMAT!r})")
    return Shard(
        background=from_int16(tensors["background"]),
        mixture=from_int16(tensors["mixture"]),
        event=from_int16(tensors["event"]),
        pairs=meta["pairs"],
        header=meta["header"],
    )


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` block of a safetensors blob (read from its JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}


# The four examples each pair yields: (task, source clip, target clip); None = silence.
EXAMPLE_KINDS: tuple[tuple[str, str | None, str], ...] = (
    ("edit_add", "background", "mixture"),
    ("edit_remove", "mixture", "background"),
    ("edit_extract", "mixture", "event"),
    ("text_to_audio", None, "event"),
)


def examples_of(shard: Shard, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Flatten a shard into examples: task, description, chat prompt, source and target clip names."""
    from model.prompts import generation_prompt  # torch-free module
    from model.tasks import Task

    out = []
    for p, pair in enumerate(shard.pairs):
        for task, source, target in EXAMPLE_KINDS:
            if kinds is not None and task not in kinds:
                continue
            out.append(
                {
                    "pair": p,
                    "task": task,
                    "description": pair["description"],
                    "prompt": generation_prompt(Task(task), prompt=pair["description"]),
                    "source": source,
                    "target": target,
                }
            )
    return out
