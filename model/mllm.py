"""The frozen MLLM conditioner: the Qwen2.5-Omni thinker and the projection of its hidden states.

Two halves live on two kinds of worker (ARCHITECTURE.md, "The flow of one job"):

* `MLLMEncoder` (encoder pool) holds the thinker and its processor. `encode` turns chat-formatted
  prompts (plus optional 16 kHz audio / uint8 video) into per-item hidden states of layer `layer_idx`
  (-2: the input of the last decoder layer), un-padded and, when longer than `pad_length`, linearly
  resampled to `pad_length` rows, all in bfloat16 (spec §4.1 steps 1-3). `understand` generates text.
* `OmniProjection` (sampler pool, `model.conditioners.omni`) pads those rows, applies the weightless
  bf16 RMS norm and the `proj_features` Linear, giving the first `pad_length` cross-attention tokens
  of the DiT.

Processor loading (with or without torchvision) lives in `model.mllm_processor`.

Weight names: the thinker's tensors sit under `THINKER_PREFIX` and the projection's under
`PROJECTION_PREFIX` in the released checkpoint (spec §2.4, §2.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    Qwen2_5OmniConfig,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
)
from transformers.processing_utils import ProcessorMixin

from model.conditioners.omni import OmniProjection
from model.mllm_processor import (
    TorchvisionFreeQwen2VLVideoProcessor,
    assemble_processor,
    has_processor_files,
    load_processor,
)
from model.prompts import (
    ASR_INSTRUCTION,
    ASR_MAX_NEW_TOKENS,
    SYS_ASR,
    SYS_UNDERSTANDING,
    understanding_conversation,
)

THINKER_PREFIX = "conditioner.conditioners.omni_prompt.model.thinker."
PROJECTION_PREFIX = "conditioner.conditioners.omni_prompt."
QWEN_SAMPLE_RATE_HZ = 16_000
QWEN_MAX_AUDIO_S = 30.0  # Whisper features cover 30 s; longer audio would be cut silently
DEFAULT_PAD_LENGTH = 2048
DEFAULT_LAYER_IDX = -2

AUDIO_TOKEN = "<|AUDIO|>"
_MEDIA_FEATURE_KEYS = frozenset({"input_features", "pixel_values", "pixel_values_videos"})
VIDEO_TOKEN = "<|VIDEO|>"

__all__ = [
    "AUDIO_TOKEN",
    "DEFAULT_LAYER_IDX",
    "DEFAULT_PAD_LENGTH",
    "PROJECTION_PREFIX",
    "QWEN_MAX_AUDIO_S",
    "QWEN_SAMPLE_RATE_HZ",
    "THINKER_PREFIX",
    "VIDEO_TOKEN",
    "MLLMEncoder",
    "MLLMPrompt",
    "OmniProjection",  # the sampler-side half, model.conditioners.omni
    "TorchvisionFreeQwen2VLVideoProcessor",  # processor loading, model.mllm_processor
    "UnderstandRequest",
    "assemble_processor",
    "check_understand_request",
    "load_processor",
    "select_hidden",
]


# --------------------------------------------------------------------------- tensor helpers


def select_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pad_length: int) -> list[torch.Tensor]:
    """Per item, the bf16 hidden rows of real tokens, resampled down to `pad_length` rows if longer.

    hidden: (B, S, D) thinker hidden states; attention_mask: (B, S') 1 on real tokens (aligned to S by
    truncating or right-padding with 0). Returns B tensors (L_i <= pad_length, D) in bfloat16. The
    resampling is 1-D linear interpolation with align_corners=False along the sequence, done in
    bfloat16 as the reference does (doing it in float32 moves the outputs by up to ~2e-2).
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be (B, S, D), got shape {tuple(hidden.shape)}")
    if attention_mask.ndim != 2 or attention_mask.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"attention_mask must be (B, S) with B={hidden.shape[0]}, got shape {tuple(attention_mask.shape)}"
        )
    if pad_length < 1:
        raise ValueError(f"pad_length must be >= 1, got {pad_length}")
    hidden = hidden.to(torch.bfloat16)  # (B, S, D)
    seq_len = hidden.shape[1]
    mask = attention_mask[:, :seq_len].to(device=hidden.device)
    if mask.shape[1] < seq_len:
        mask = F.pad(mask, (0, seq_len - mask.shape[1]), value=0)
    rows: list[torch.Tensor] = []
    for item, item_mask in zip(hidden, mask, strict=True):
        real = item[item_mask == 1]  # (L, D)
        if real.shape[0] > pad_length:
            real = F.interpolate(
                real.t().unsqueeze(0), size=pad_length, mode="linear", align_corners=False
            )  # (1, D, pad_length)
            real = real.squeeze(0).t()  # (pad_length, D)
        rows.append(real)
    return rows


# --------------------------------------------------------------------------- the encoder


@dataclass(frozen=True)
class MLLMPrompt:
    """One conditioning prompt for the thinker.

    text: already chat-formatted (model.prompts.generation_prompt); it holds one `<|AUDIO|>` marker
    per given audio and one `<|VIDEO|>` marker per given video. audio: mono float waveform at 16 kHz,
    at most 30 s. video: uint8 frames (T, 3, H, W). An all-zero video or a silent audio counts as
    absent (the markers then stay plain tokens), as in the reference.
    """

    text: str
    audio: np.ndarray | torch.Tensor | None = None
    video: np.ndarray | torch.Tensor | None = None


@dataclass(frozen=True)
class UnderstandRequest:
    """A question about an optional audio (16 kHz mono) and/or video (uint8 (T, 3, H, W))."""

    question: str
    audio: np.ndarray | torch.Tensor | None = None
    video: np.ndarray | torch.Tensor | None = None
    system: str = SYS_UNDERSTANDING


class MLLMEncoder:
    """The frozen Qwen2.5-Omni thinker (eval, no grad) with its processor.

    Not thread-safe: the thinker keeps per-call rope state. Call it from one thread (one Ray actor).
    """

    def __init__(
        self,
        thinker: Qwen2_5OmniThinkerForConditionalGeneration,
        processor: Qwen2_5OmniProcessor | None = None,
        *,
        pad_length: int = DEFAULT_PAD_LENGTH,
        layer_idx: int = DEFAULT_LAYER_IDX,
    ) -> None:
        num_hidden_states = thinker.config.text_config.num_hidden_layers + 1
        if pad_length < 1:
            raise ValueError(f"pad_length must be >= 1, got {pad_length}")
        if not -num_hidden_states <= layer_idx < num_hidden_states:
            raise ValueError(
                f"layer_idx must be in [{-num_hidden_states}, {num_hidden_states - 1}] for a thinker "
                f"with {num_hidden_states} hidden states, got {layer_idx}"
            )
        if processor is not None:
            _check_processor_matches(thinker.config, processor)
        thinker.eval()
        thinker.requires_grad_(False)
        self.thinker = thinker
        self.processor = processor
        self.pad_length = pad_length
        self.layer_idx = layer_idx

    # ----------------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        pad_length: int = DEFAULT_PAD_LENGTH,
        layer_idx: int = DEFAULT_LAYER_IDX,
    ) -> MLLMEncoder:
        """Build from a local Qwen2.5-Omni folder: `config.json` (its `thinker_config`) and, when the
        folder has tokenizer files, the processor. Weights are random until `load_thinker_state_dict`.
        """
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"no config.json in the MLLM folder {str(path)!r}")
        config = Qwen2_5OmniConfig.from_pretrained(path, local_files_only=True)
        processor = load_processor(path) if has_processor_files(path) else None
        return cls.from_config(
            config.thinker_config,
            processor,
            dtype=dtype,
            device=device,
            pad_length=pad_length,
            layer_idx=layer_idx,
        )

    @classmethod
    def from_config(
        cls,
        thinker_config: Qwen2_5OmniThinkerConfig,
        processor: Qwen2_5OmniProcessor | None = None,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        pad_length: int = DEFAULT_PAD_LENGTH,
        layer_idx: int = DEFAULT_LAYER_IDX,
    ) -> MLLMEncoder:
        """A thinker with random weights of `thinker_config`, built directly on `device`."""
        with torch.device(device):
            thinker = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
                thinker_config, dtype=dtype, attn_implementation="sdpa"
            )
        return cls(thinker, processor, pad_length=pad_length, layer_idx=layer_idx)

    def load_thinker_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load thinker weights strictly; keys may carry the released `THINKER_PREFIX` or not.
        Values are cast to the thinker's dtype on copy."""
        stripped = {
            (key[len(THINKER_PREFIX) :] if key.startswith(THINKER_PREFIX) else key): value
            for key, value in state_dict.items()
        }
        self.thinker.load_state_dict(stripped, strict=True)

    @property
    def device(self) -> torch.device:
        return next(self.thinker.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.thinker.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return self.thinker.config.text_config.hidden_size

    # ----------------------------------------------------------------------- conditioning

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **mm_inputs: Any) -> torch.Tensor:
        """Thinker `hidden_states[layer_idx]` (B, S, D) for token ids (B, S) and processor extras
        (audio features, video patches, grids). With the default -2 this is the raw output of the
        second-to-last decoder layer (the last entry is the final-normed output)."""
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                "input_ids and attention_mask must both be (B, S), got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        inputs = self._to_device(mm_inputs)
        out = self.thinker(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            output_hidden_states=True,
            return_dict=True,
            use_cache=False,
            **inputs,
        )
        return out.hidden_states[self.layer_idx]  # (B, S, D)

    def encode_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_length: int | None = None
    ) -> list[torch.Tensor]:
        """Per-item bf16 hidden rows (L_i <= pad_length, D) for already tokenized text prompts."""
        hidden = self.hidden_states(input_ids, attention_mask)
        return select_hidden(hidden, attention_mask, self.pad_length if pad_length is None else pad_length)

    def encode(self, prompts: Sequence[MLLMPrompt]) -> list[torch.Tensor]:
        """Per-item bf16 hidden rows (L_i <= pad_length, D) for a batch of prompts (spec §4.1).

        Prompts are run in one thinker call per combination of present media: the processor pairs
        media with markers in batch order, so a prompt whose (black) video was dropped must not sit
        beside one that has a video.
        """
        processor = self._require_processor()
        if len(prompts) == 0:
            raise ValueError("prompts must hold at least one MLLMPrompt")
        items: list[tuple[str, np.ndarray | None, torch.Tensor | None]] = []
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt.text, str) or not prompt.text.strip():
                raise ValueError(f"prompts[{i}].text must be a non-empty string, got {prompt.text!r}")
            audio = _check_audio(prompt.audio, f"prompts[{i}].audio")
            video = _check_video(prompt.video, f"prompts[{i}].video")
            # Silent audio / black video mean "none" (the reference filters them out the same way);
            # their markers then stay plain tokens.
            if audio is not None and not np.any(audio):
                audio = None
            if video is not None and not bool(video.any()):
                video = None
            _check_markers(prompt.text, has_audio=audio is not None, has_video=video is not None, where=i)
            items.append((prompt.text, audio, video))
            groups.setdefault((audio is not None, video is not None), []).append(i)

        rows: list[torch.Tensor | None] = [None] * len(items)
        for indices in groups.values():
            batch = [items[i] for i in indices]
            audios = [audio for _, audio, _ in batch if audio is not None]
            videos = [video for _, _, video in batch if video is not None]
            inputs = processor(
                text=[text for text, _, _ in batch],
                audio=audios or None,
                images=None,
                videos=videos or None,
                return_tensors="pt",
                padding=True,
                use_audio_in_video=False,
            )
            input_ids = inputs.pop("input_ids")
            attention_mask = inputs.pop("attention_mask")
            hidden = self.hidden_states(input_ids, attention_mask, use_audio_in_video=False, **inputs)
            for i, item_rows in zip(indices, select_hidden(hidden, attention_mask, self.pad_length), strict=True):
                rows[i] = item_rows
        return [r for r in rows if r is not None]

    # ----------------------------------------------------------------------- understanding

    @torch.no_grad()
    def understand(
        self,
        requests: Sequence[UnderstandRequest],
        *,
        max_new_tokens: int = 512,
        do_sample: bool = False,
    ) -> list[str]:
        """Answer each request with the thinker's generated text (prompt excluded, stripped)."""
        processor = self._require_processor()
        if len(requests) == 0:
            raise ValueError("requests must hold at least one UnderstandRequest")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        texts: list[str] = []
        audios: list[np.ndarray] = []
        videos: list[torch.Tensor] = []
        for i, request in enumerate(requests):
            audio, video = check_understand_request(request, f"requests[{i}]")
            conversation = understanding_conversation(
                request.question,
                has_audio=audio is not None,
                has_video=video is not None,
                system=request.system,
            )
            # ProcessorMixin's template call directly: Qwen's override only adds a root-logger warning
            # for every system prompt but its own (ASR, custom systems), which is noise here.
            texts.append(
                ProcessorMixin.apply_chat_template(processor, conversation, add_generation_prompt=True, tokenize=False)
            )
            if audio is not None:
                audios.append(audio)
            if video is not None:
                videos.append(video)
        # Audio and video come as separate items here, so the video's own sound is not interleaved.
        inputs = processor(
            text=texts,
            audio=audios or None,
            images=None,
            videos=videos or None,
            return_tensors="pt",
            padding=True,
            use_audio_in_video=False,
        )
        inputs = self._to_device(dict(inputs))
        tokenizer = processor.tokenizer
        # Stop at the end of the assistant turn; a thinker built from config has no generation config.
        stop_ids = sorted(
            {tid for tid in (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id) if tid is not None}
        )
        generated = self.thinker.generate(
            **inputs,
            use_audio_in_video=False,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )  # (B, S + new)
        # Decode only the new tokens: the reference API decoded the prompt too (spec §8 item 19).
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        answers = tokenizer.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [answer.strip() for answer in answers]

    def transcribe(
        self, audios: Sequence[np.ndarray | torch.Tensor], *, max_new_tokens: int = ASR_MAX_NEW_TOKENS
    ) -> list[str]:
        """Transcribe voice prompts (16 kHz mono) with the thinker, as the reference UI does for a
        voice prompt given without its text (spec §5.3)."""
        requests = [UnderstandRequest(question=ASR_INSTRUCTION, audio=audio, system=SYS_ASR) for audio in audios]
        return self.understand(requests, max_new_tokens=max_new_tokens)

    # ----------------------------------------------------------------------- internals

    def _require_processor(self) -> Qwen2_5OmniProcessor:
        if self.processor is None:
            raise ValueError(
                "this MLLMEncoder has no processor (its folder had no tokenizer files); "
                "only encode_ids / hidden_states are available"
            )
        return self.processor

    def _to_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        moved: dict[str, Any] = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                # Media features follow the thinker's dtype (bf16 in production); ids, masks, grids and
                # seconds-per-grid keep theirs.
                value = value.to(self.device, self.dtype) if key in _MEDIA_FEATURE_KEYS else value.to(self.device)
            moved[key] = value
        return moved


def check_understand_request(
    request: UnderstandRequest, name: str = "request"
) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """The thinker's input checks for one understanding request (question, audio <= 30 s at 16 kHz,
    video frames): its audio and video as the thinker takes them, or a ValueError naming the value.
    Callers that batch requests from many jobs run it per request first, so one bad request fails
    alone instead of failing its batch-mates."""
    if not isinstance(request.question, str) or not request.question.strip():
        raise ValueError(f"{name}.question must be a non-empty string, got {request.question!r}")
    return _check_audio(request.audio, f"{name}.audio"), _check_video(request.video, f"{name}.video")


def _check_processor_matches(config: Qwen2_5OmniThinkerConfig, processor: Qwen2_5OmniProcessor) -> None:
    tokenizer = processor.tokenizer
    expected = {
        AUDIO_TOKEN: config.audio_token_index,
        VIDEO_TOKEN: config.video_token_index,
        "<|IMAGE|>": config.image_token_index,
    }
    for token, config_id in expected.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id != config_id:
            raise ValueError(
                f"processor and thinker disagree on {token}: tokenizer id {token_id}, config id {config_id}"
            )
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the thinker's vocab_size is {config.text_config.vocab_size}"
        )


def _check_audio(audio: np.ndarray | torch.Tensor | None, name: str) -> np.ndarray | None:
    if audio is None:
        return None
    array = audio.detach().cpu().float().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    array = np.squeeze(array.astype(np.float32, copy=False))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty mono waveform, got shape {np.shape(audio)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or Inf samples")
    max_samples = int(QWEN_MAX_AUDIO_S * QWEN_SAMPLE_RATE_HZ)
    if array.size > max_samples:
        raise ValueError(
            f"{name} has {array.size} samples ({array.size / QWEN_SAMPLE_RATE_HZ:.1f} s at 16 kHz); "
            f"at most {max_samples} ({QWEN_MAX_AUDIO_S:.0f} s) are allowed"
        )
    return array


def _check_video(video: np.ndarray | torch.Tensor | None, name: str) -> torch.Tensor | None:
    if video is None:
        return None
    frames = torch.as_tensor(video)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError(
            f"{name} must be uint8 frames (T>=1, 3, H, W), got dtype {frames.dtype} shape {tuple(frames.shape)}"
        )
    return frames.cpu()


def _check_markers(text: str, *, has_audio: bool, has_video: bool, where: int) -> None:
    audio_markers, video_markers = text.count(AUDIO_TOKEN), text.count(VIDEO_TOKEN)
    for name, token, present, count in (
        ("an audio", AUDIO_TOKEN, has_audio, audio_markers),
        ("a video", VIDEO_TOKEN, has_video, video_markers),
    ):
        if present and count != 1:
            raise ValueError(
                f"prompts[{where}] has {name}, so its text needs exactly one {token} marker, found {count}"
            )
        # The processor expands every marker of each kind once it is given any media at all, so a
        # marker without its media can only ride along when the prompt has no media whatsoever.
        if not present and count and (has_audio or has_video):
            raise ValueError(
                f"prompts[{where}] has a {token} marker but no (non-silent, non-black) media for it, "
                "next to other media; drop the marker or give the media"
            )
