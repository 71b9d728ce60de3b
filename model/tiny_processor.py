"""A tiny, offline stand-in for a local Qwen2.5-Omni-3B folder (config + processor files).

Production loads `MLLMEncoder.from_pretrained(<Qwen2.5-Omni-3B folder>)`. Tests and the `tiny` preset
run the same code on a folder written here: a byte-level BPE tokenizer trained in a blink on a few
dozen sentences (the prompts of model/prompts.py among them) that carries the Qwen special tokens,
the Qwen chat template, a 128-bin Whisper feature extractor, the Qwen2-VL image and video
processors, and a `config.json` whose thinker is small and whose special-token ids are the ones this
tokenizer assigned. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Qwen2_5OmniConfig,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    WhisperFeatureExtractor,
)
from transformers.utils import is_torchvision_available

from model import prompts
from model.mllm import TorchvisionFreeQwen2VLVideoProcessor, assemble_processor

# Bump when the folder's content changes, so a cached folder from an older build is not reused.
TINY_MLLM_VERSION = 1
TINY_BPE_VOCAB_SIZE = 600

# The Qwen2.5-Omni special tokens, in the order the real tokenizer appends them after its BPE vocab.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
)
# Named attributes the Qwen2.5-Omni processor reads off its tokenizer.
QWEN_NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}

# Qwen's pre-tokenisation split (contractions, letter runs, single digits, punctuation, spaces).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The Qwen2.5-Omni chat format: system / user / assistant turns; media items become their markers.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' or 'audio' in item or 'audio_url' in item %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif item['type'] == 'video' or 'video' in item %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in item %}"
    "{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

_CORPUS_SENTENCES = (
    "system",
    "user",
    "assistant",
    "A clock ticking.",
    "A dog barking in the distance.",
    "Rain on a tin roof.",
    "Generate the sound of a dog barking.",
    "Footsteps on gravel, then a door creaks open.",
    "An upbeat jazz piece with piano, double bass and brushed drums.",
    "A calm ambient track with soft synth pads.",
    "Birds chirping in a forest at dawn.",
    "Thunder rolls while heavy rain falls.",
    "A crowd cheering at a football match.",
    "Hello world, this is a short test sentence.",
    "What sound is in this clip? Describe the audio in one sentence.",
    "Is there speech in this recording? Answer yes or no.",
    "Describe the music: genre, tempo, mood and instruments.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, 10 seconds, 44100 Hz.",
    "A car engine starts and drives away.",
    "Waves crashing on the shore and seagulls calling.",
    "A violin melody over a string quartet.",
    "Glass breaking on a tiled floor.",
    "Keyboard typing in a quiet office.",
    "A baby laughing.",
    "Wind howling through the trees at night.",
)


def _training_corpus() -> list[str]:
    texts = list(_CORPUS_SENTENCES)
    texts += [
        prompts.SYS_T2A,
        prompts.SYS_T2M,
        prompts.SYS_TTS,
        prompts.SYS_V2A,
        prompts.SYS_V2M,
        prompts.SYS_EDIT,
        prompts.SYS_UNDERSTANDING,
        prompts.SYS_ASR,
        prompts.ASR_INSTRUCTION,
        prompts.EDIT_ADD_TEMPLATE.format(desc="a dog barking"),
        prompts.EDIT_REMOVE_TEMPLATE.format(desc="rain"),
        prompts.EDIT_EXTRACT_TEMPLATE.format(desc="speech"),
        prompts.EDIT_STYLE_TRANSFER_TEMPLATE.format(source="piano", target="guitar"),
    ]
    # The role names recur in every chat turn; repeating them makes each one a single token.
    return texts + ["system\nuser\nassistant\n"] * 20


def build_tiny_tokenizer(*, vocab_size: int = TINY_BPE_VOCAB_SIZE) -> Qwen2Tokenizer:
    """Train a byte-level BPE on the tiny corpus and wrap it as the Qwen2 tokenizer class."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    for token in QWEN_SPECIAL_TOKENS:  # appended after the BPE vocab, as in Qwen's tokenizer
        vocab[token] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_specific_special_tokens=dict(QWEN_NAMED_TOKENS),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_processor(out_dir: str | Path) -> Qwen2_5OmniProcessor:
    """Build the tiny processor offline and save it to `out_dir` (loadable with
    `Qwen2_5OmniProcessor.from_pretrained` where torchvision exists, `model.mllm.load_processor`
    everywhere)."""
    if is_torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        video_processor: Any = Qwen2VLVideoProcessor()
    else:
        video_processor = TorchvisionFreeQwen2VLVideoProcessor()
    processor = assemble_processor(
        tokenizer=build_tiny_tokenizer(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),  # Qwen2.5-Omni: 128 mel bins
        image_processor=Qwen2VLImageProcessor(),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(out_dir))
    return processor


def tiny_thinker_config(processor_or_tokenizer: Any) -> Qwen2_5OmniThinkerConfig:
    """A small thinker (the parity tiny thinker's sizes) that fits the given tokenizer's ids."""
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)

    def token_id(token: str) -> int:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer must encode {token!r} as one id, got {ids}")
        return ids[0]

    vocab_size = -(-len(tokenizer) // 64) * 64  # round up, as real vocabularies are padded
    return Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "output_dim": 64,
            "n_window": 50,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [0],
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        },
        audio_token_index=token_id("<|AUDIO|>"),
        audio_start_token_id=token_id("<|audio_bos|>"),
        audio_end_token_id=token_id("<|audio_eos|>"),
        image_token_index=token_id("<|IMAGE|>"),
        video_token_index=token_id("<|VIDEO|>"),
        vision_start_token_id=token_id("<|vision_bos|>"),
        vision_end_token_id=token_id("<|vision_eos|>"),
        user_token_id=token_id("user"),
    )


def tiny_mllm_dir(cache_dir: str | Path) -> Path:
    """The tiny Qwen2.5-Omni folder under `cache_dir` (config.json + processor files), written once.

    Safe to call concurrently: the folder is built aside and moved into place in one rename.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-qwen2.5-omni-v{TINY_MLLM_VERSION}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-qwen-", dir=cache_dir))
    try:
        processor = build_tiny_processor(staging)
        config = Qwen2_5OmniConfig(thinker_config=tiny_thinker_config(processor).to_dict(), enable_audio_output=False)
        config.save_pretrained(str(staging))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process won the race: fine if complete
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
