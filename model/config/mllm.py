"""The frozen Qwen2.5-Omni thinker's section (`omni_prompt` conditioner) and where it comes from."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from model.config.checks import positive

MLLM_DEFAULT_HIDDEN_SIZE = 2048  # Qwen2.5-Omni-3B thinker text width
# `builtin:` MLLM names are materialised in code (see model/tiny_processor.py); their thinker width.
BUILTIN_MLLM_HIDDEN_SIZE: dict[str, int] = {"builtin:tiny": 64}
MLLM_PATH_ENV = "QWEN_OMNI_MODEL_PATH"


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
        positive("mllm.pad_length", self.pad_length)
        positive("mllm.hidden_size", self.hidden_size)
        if isinstance(self.layer_idx, bool) or not isinstance(self.layer_idx, int):
            raise ValueError(f"mllm.layer_idx must be an integer, got {self.layer_idx!r}")


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
            return int(section["hidden_size"])
    return MLLM_DEFAULT_HIDDEN_SIZE
