"""`audio-omni inspect`: the checkpoint layout (released names and shapes) a config expects.

The model is built on the meta device: no memory, no download. The thinker is summarised in one row,
as in the reference's `full_param_shapes.tsv` (its names follow transformers' Qwen2.5-Omni thinker).
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
    src.add_argument("--preset", help="a model preset (full, tiny)")
    src.add_argument("--config", help="a released-schema JSON config")


def run(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import released_layout
    from model.config import load_config
    from model.parts import SamplerPart

    config = load_config(args.preset or args.config)
    with torch.device("meta"):
        part = SamplerPart(config)
    print("name\tshape\tkind")
    for name, shape, kind in released_layout(part):
        print(f"{name}\t{'x'.join(str(n) for n in shape)}\t{kind}")
    import transformers

    print(THINKER_ROW.format(model=config.mllm.model_name_or_path, version=transformers.__version__))
    return 0
