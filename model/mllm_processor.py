"""Loading the Qwen2.5-Omni processor from a local folder, with or without torchvision.

transformers' video processor for Qwen2-VL needs torchvision; `TorchvisionFreeQwen2VLVideoProcessor`
does the same resizing and patching on plain torch, and `load_processor` assembles the processor
part by part from the folder's files when torchvision is absent. Nothing here downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    Qwen2_5OmniProcessor,
    Qwen2VLImageProcessor,
    WhisperFeatureExtractor,
)
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling
from transformers.processing_utils import VideosKwargs
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import BaseVideoProcessor


class _VideoKwargs(VideosKwargs, total=False):
    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int


class TorchvisionFreeQwen2VLVideoProcessor(BaseVideoProcessor):
    """Qwen2-VL video preprocessing for machines without torchvision (CPU CI).

    transformers' `Qwen2VLVideoProcessor` resizes with torchvision, which has no build for this
    project's torch on CPU. This class keeps its configuration schema and outputs
    (`pixel_values_videos`, `video_grid_thw`) and delegates the per-frame work to the PIL-based
    `Qwen2VLImageProcessor._preprocess` (same smart resize, CLIP normalisation and patch layout;
    resampling may differ from torchvision's in the last bits). Where torchvision exists the library
    class is used instead (`load_processor`). It serialises under the library's class name, so a
    folder written with it loads the real class elsewhere.
    """

    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}  # noqa: RUF012 - library schema
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    do_sample_frames = False
    valid_kwargs = _VideoKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]  # noqa: RUF012 - library schema

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["video_processor_type"] = "Qwen2VLVideoProcessor"
        return output

    def _further_process_kwargs(self, size=None, min_pixels=None, max_pixels=None, resample=None, **kwargs) -> dict:
        if min_pixels is not None and max_pixels is not None:
            size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        # The base class would map `resample` to a torchvision mode; keep the PIL filter instead.
        kwargs = super()._further_process_kwargs(size=size, resample=None, **kwargs)
        kwargs["interpolation"] = resample
        return kwargs

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size,
        interpolation,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
        do_convert_rgb: bool = True,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        frames_processor = Qwen2VLImageProcessor()
        pixel_values: list[torch.Tensor] = []
        grids: list[list[int]] = []
        for video in videos:  # each (T, C, H, W)
            patches, grid = frames_processor._preprocess(
                list(video.cpu().numpy()),
                do_resize=do_resize,
                size={"shortest_edge": size.shortest_edge, "longest_edge": size.longest_edge},
                resample=interpolation,
                do_rescale=do_rescale,
                rescale_factor=rescale_factor,
                do_normalize=do_normalize,
                image_mean=image_mean,
                image_std=image_std,
                patch_size=patch_size,
                temporal_patch_size=temporal_patch_size,
                merge_size=merge_size,
                do_convert_rgb=do_convert_rgb,
                input_data_format=ChannelDimension.FIRST,
            )
            pixel_values.append(torch.from_numpy(patches))  # (grid_t * grid_h * grid_w, C * t * p * p)
            grids.append(list(grid))
        return BatchFeature(
            data={"pixel_values_videos": torch.cat(pixel_values), "video_grid_thw": torch.tensor(grids)},
            tensor_type=return_tensors,
        )


class _TorchvisionFreeOmniProcessor(Qwen2_5OmniProcessor):
    # Only used to construct the processor: the library checks the video processor against its
    # torchvision-only base class, which is a placeholder when torchvision is missing.
    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and isinstance(argument, TorchvisionFreeQwen2VLVideoProcessor):
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)


def assemble_processor(
    *,
    tokenizer: Any,
    feature_extractor: WhisperFeatureExtractor,
    image_processor: Any,
    video_processor: Any,
    chat_template: str | None = None,
) -> Qwen2_5OmniProcessor:
    """A `Qwen2_5OmniProcessor` from its parts; accepts the torchvision-free video processor."""
    if isinstance(video_processor, TorchvisionFreeQwen2VLVideoProcessor):
        processor = _TorchvisionFreeOmniProcessor(
            image_processor, video_processor, feature_extractor, tokenizer, chat_template=chat_template
        )
        # Same object layout; from here on it is the library class (saved, compared and used as such).
        processor.__class__ = Qwen2_5OmniProcessor
        return processor
    return Qwen2_5OmniProcessor(
        image_processor, video_processor, feature_extractor, tokenizer, chat_template=chat_template
    )


def load_processor(path: str | Path) -> Qwen2_5OmniProcessor:
    """Load the Qwen2.5-Omni processor saved in a local folder (never downloads).

    With torchvision installed this is `Qwen2_5OmniProcessor.from_pretrained`. Without it, the same
    files are read part by part and the video part is `TorchvisionFreeQwen2VLVideoProcessor`.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"processor folder {str(path)!r} does not exist")
    if is_torchvision_available():
        return Qwen2_5OmniProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return assemble_processor(
        tokenizer=tokenizer,
        feature_extractor=WhisperFeatureExtractor.from_pretrained(path, local_files_only=True),
        image_processor=Qwen2VLImageProcessor.from_pretrained(path, local_files_only=True),
        video_processor=TorchvisionFreeQwen2VLVideoProcessor.from_pretrained(path, local_files_only=True),
        chat_template=_read_chat_template(path) or tokenizer.chat_template,
    )


def _read_chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    return None


def has_processor_files(path: Path) -> bool:
    """Whether a folder holds tokenizer files (a thinker folder may hold only its config)."""
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()
