"""Typed configuration of Audio-Omni, read from (and written back to) the released `Audio-Omni.json`.

One module per part: `dit` (the DiT section), `conditioners` (ids, sync, speech and mel sections),
`sync_extractor` (the Synchformer visual extractor and its frame sampling constants),
`mllm` (the thinker section and where it comes from), `codec` (Oobleck VAE or the mel codec),
`model` (`AudioOmniConfig`: the cross-section rules and derived sizes), `schema` (reading and
writing the released JSON) and `presets` (named configs). Every public name is re-exported here.

No torch import in this package: the orchestrator reads configs without loading the model stack.
"""

from __future__ import annotations

from model.config.codec import MelCodecConfig, VAEConfig
from model.config.conditioners import (
    CONDITIONER_TYPES,
    MEL_ID,
    MEL_NUM_FRAMES,
    MEL_WINDOW_S,
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
from model.config.mllm import (
    BUILTIN_MLLM_HIDDEN_SIZE,
    MLLM_DEFAULT_HIDDEN_SIZE,
    MLLM_PATH_ENV,
    MLLMConfig,
    mllm_hidden_size,
    resolve_mllm_path,
)
from model.config.model import AudioOmniConfig
from model.config.presets import (
    PACKAGED_WEIGHTS,
    PRESETS,
    RELEASED_CONFIG,
    TEST_SYNC_EXTRACTOR,
    get_preset,
    load_config,
    packaged_weights,
)
from model.config.sync_extractor import (
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_SEGMENT_STRIDE,
    SYNC_SIZE,
    SYNC_WINDOW_S,
    SyncExtractorConfig,
    sync_frame_count,
)

__all__ = [
    "BUILTIN_MLLM_HIDDEN_SIZE",
    "CONDITIONER_TYPES",
    "COND_DIM",
    "MEL_ID",
    "MEL_NUM_FRAMES",
    "MEL_WINDOW_S",
    "MLLM_DEFAULT_HIDDEN_SIZE",
    "MLLM_PATH_ENV",
    "OMNI_ID",
    "PACKAGED_VOCAB",
    "PACKAGED_WEIGHTS",
    "PRESETS",
    "RELEASED_CONFIG",
    "RELEASED_VOCAB_PATH",
    "SPEECH_ID",
    "SYNC_DEFAULT_OUTPUT_DIM",
    "SYNC_FPS",
    "SYNC_ID",
    "SYNC_SEGMENT_FRAMES",
    "SYNC_SEGMENT_STRIDE",
    "SYNC_SIZE",
    "SYNC_WINDOW_S",
    "TEST_SYNC_EXTRACTOR",
    "AudioOmniConfig",
    "DiTConfig",
    "MLLMConfig",
    "MelCodecConfig",
    "MelConfig",
    "SpeechConfig",
    "SyncConfig",
    "SyncExtractorConfig",
    "VAEConfig",
    "get_preset",
    "load_config",
    "mllm_hidden_size",
    "packaged_weights",
    "resolve_mllm_path",
    "resolve_vocab_file",
    "sync_frame_count",
]
