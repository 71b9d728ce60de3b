"""Recompute the Synchformer parity vectors with our extractor and report each tensor's error.

The vector set (`../shared/parity/sync/`) holds uint8 frames (`in.frames_u8`), the features they
give (`out.features`) and debug tensors of the path: the tubelet embedding of the first segment
(`dbg.patch_embed_3d`), the output of each block for it (`dbg.block{k}`) and the pooled tokens of
every segment (`dbg.spatial_agg`). The extractor's layout comes from the vectors' `case` metadata.
No I/O here: `audio-omni verify-sync` reads the files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from model.config import SyncExtractorConfig
from model.sync.extractor import SyncExtractor
from model.sync.loading import load_extractor_weights
from model.verify import Check, compare

TOLERANCE = 1e-4  # max absolute error on every tensor (the vectors' README)
FRAMES = "in.frames_u8"
_BLOCK = re.compile(r"^dbg\.block(\d+)$")
KNOWN = ("dbg.patch_embed_3d", "dbg.spatial_agg", "out.features")


def config_from_case(case: Mapping[str, Any]) -> SyncExtractorConfig:
    """The extractor layout a vector set was made with (its `case` fields; others keep the release's)."""
    return SyncExtractorConfig(**{k: case[k] for k in SyncExtractorConfig.field_names() if k in case})


def build_for_vectors(case: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> SyncExtractor:
    """An extractor of the case's layout with `weights` (a Synchformer state dict) loaded strictly."""
    with torch.device("meta"):  # the weights become the parameters: no random init
        extractor = SyncExtractor(config_from_case(case))
    load_extractor_weights(extractor, weights)
    return extractor.eval()


@torch.no_grad()
def sync_checks(extractor: SyncExtractor, vectors: Mapping[str, torch.Tensor]) -> Iterator[Check]:
    """One `Check` per reference tensor: the debug path of the first segment, then the pooled tokens
    of every segment, then the features. A tensor this check cannot recompute raises `ValueError`."""
    if FRAMES not in vectors:
        raise ValueError(f"the vectors hold no {FRAMES!r} (the input frames)")
    block_ids = {name: int(m[1]) for name in vectors if (m := _BLOCK.match(name))}
    unknown = sorted(set(vectors) - set(block_ids) - {FRAMES, *KNOWN})
    if unknown:
        raise ValueError(f"no rule to recompute {unknown}; known tensors: {FRAMES}, dbg.block<k>, {', '.join(KNOWN)}")
    frames = vectors[FRAMES]
    extractor.check_frames(frames, where=FRAMES)
    net = extractor.vfeat_extractor
    segments = extractor.segments(extractor.prepare(frames))
    tokens = net.embed(extractor.network_input(segments[:1]))
    if "dbg.patch_embed_3d" in vectors:
        yield compare("dbg.patch_embed_3d", tokens, vectors["dbg.patch_embed_3d"], TOLERANCE)
    blocks: list[torch.Tensor] = []
    net.encode(tokens, keep=blocks)
    for name, k in sorted(block_ids.items(), key=lambda item: item[1]):
        if k >= len(blocks):
            raise ValueError(f"the vectors hold {name} but the extractor has {len(blocks)} blocks")
        yield compare(name, blocks[k], vectors[name], TOLERANCE)
    if "dbg.spatial_agg" in vectors:
        pooled = net(extractor.network_input(segments))  # (S, tokens per segment, D)
        yield compare("dbg.spatial_agg", pooled, vectors["dbg.spatial_agg"], TOLERANCE)
    if "out.features" in vectors:
        yield compare("out.features", extractor(frames[None]), vectors["out.features"], TOLERANCE)
