"""`audio-omni inspect`: the checkpoint layout (released names and shapes) a config expects.

The model is built on the meta device: no memory, no download. The thinker is summarised in one row,
as in the reference's `full_param_shapes.tsv` (its names follow transformers' Qwen2.5-Omni thinker).
With `--sync`, the layout of the Synchformer visual extractor instead: `name<TAB>shape` rows in the
form of the release's `full_sync_param_shapes.tsv` (names as in `synchformer_state_dict.pth`).
"""

from __future__ import annotations

import argparse

THINKER_ROW = (
    "conditioner.conditioners.omni_prompt.model.thinker.*\t"
    "(not enumerated: {model} thinker, names as in transformers {version} "
    "Qwen2_5OmniThinkerForConditionalGeneration)\tparam"
)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a model preset (full, tiny, small)")
    src.add_argument("--config", help="a released-schema JSON config")
    parser.add_argument(
        "--sync", action="store_true", help="list the Synchformer visual extractor's weights (name<TAB>shape)"
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def run(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import released_layout
    from model.config import load_config

    config = load_config(args.preset or args.config)
    if args.sync:
        from model.sync import SyncExtractor

        with torch.device("meta"):
            extractor = SyncExtractor(config.sync_extractor)
        for name, shape, _ in released_layout(extractor):
            print(f"{name}\t{_shape(shape)}")
        return 0

    from model.parts import SamplerPart

    with torch.device("meta"):
        part = SamplerPart(config)
    print("name\tshape\tkind")
    for name, shape, kind in released_layout(part):
        print(f"{name}\t{_shape(shape)}\t{kind}")
    import transformers

    print(THINKER_ROW.format(model=config.mllm.model_name_or_path, version=transformers.__version__))
    return 0
