"""Transcript text -> character / pinyin tokens -> vocabulary ids, for the speech conditioner.

The released model was trained on the F5-TTS Emilia ZH/EN pinyin vocabulary (`model/data/vocab.txt`,
2545 entries, CRLF line endings). Latin text is spelt character by character; Chinese is converted
to TONE3 pinyin syllables (with tone sandhi), each preceded by a space token. Everything here is
plain Python except `batch_ids`, which builds the padded id tensor the conditioner takes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

VOCAB_SIZE = 2545
PAD_ID = -1
UNKNOWN_ID = 0  # index of the " " token: unknown characters behave like a space
# Shipped as package data beside the package (a path, not importlib.resources: an editable install
# can expose `model` as a namespace package, which has no resource reader).
DEFAULT_VOCAB_PATH = Path(__file__).resolve().parents[1] / "data" / "vocab.txt"

# Applied before segmentation: `;` becomes `,`, curly quotes become straight ones.
_TRANSLATION = str.maketrans({";": ",", "“": '"', "”": '"', "‘": "'", "’": "'"})
# A multi-character Latin segment gets a leading space unless the last token is one of these.
_NO_SPACE_AFTER = frozenset({" ", ":", "'", '"'})

_jieba_lock = threading.Lock()
_jieba_ready = False


def _is_chinese(char: str) -> bool:
    return "\u3100" <= char <= "\u9fff"


def _segment(text: str) -> list[str]:
    """jieba default-mode segmentation; the dictionary is loaded on first use, without log output."""
    global _jieba_ready
    import jieba  # imported lazily: loading its dictionary takes about a second

    if not _jieba_ready:
        with _jieba_lock:
            if not _jieba_ready:
                jieba.setLogLevel(50)
                jieba.initialize()
                _jieba_ready = True
    return list(jieba.cut(text))


def _pinyin(text: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(text, style=Style.TONE3, tone_sandhi=True)


def _segment_pinyin(seg: str) -> list[str]:
    """One TONE3 syllable (or the character itself) per character of an all-3-byte segment.

    The segment is converted as a whole so that tone sandhi sees its neighbours. pypinyin merges a
    run of characters without pinyin into one item; the released front end then fails on its own
    index, which we must not do, so such segments are re-converted with one item per character.
    """
    syllables = _pinyin(seg)
    if len(syllables) != len(seg):
        from pypinyin import Style, lazy_pinyin

        syllables = lazy_pinyin(seg, style=Style.TONE3, tone_sandhi=True, errors=lambda run: list(run))
    return syllables


def text_to_tokens(text: str) -> list[str]:
    """Character / pinyin tokens of one transcript, as the released speech front end makes them.

    >>> text_to_tokens("hello world")
    ['h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd']
    """
    if not isinstance(text, str):
        raise ValueError(f"transcript must be a str, got {type(text).__name__}")
    tokens: list[str] = []
    for seg in _segment(text.translate(_TRANSLATION)):
        num_bytes = len(seg.encode("utf-8"))
        if num_bytes == len(seg):  # pure ASCII
            if tokens and num_bytes > 1 and tokens[-1] not in _NO_SPACE_AFTER:
                tokens.append(" ")
            tokens.extend(seg)
        elif num_bytes == 3 * len(seg):  # only 3-byte characters (CJK range)
            for char, syllable in zip(seg, _segment_pinyin(seg), strict=True):
                if _is_chinese(char):
                    tokens.append(" ")
                tokens.append(syllable)
        else:  # mixed widths: character by character, no sandhi context
            for char in seg:
                if ord(char) < 256:
                    tokens.append(char)
                elif _is_chinese(char):
                    tokens.append(" ")
                    tokens.extend(_pinyin(char))
                else:
                    tokens.append(char)
    return tokens


@functools.lru_cache(maxsize=8)
def _read_vocab(path: str | None) -> tuple[str, ...]:
    # Text mode: universal newlines turn the file's CRLF into "\n", so no entry keeps a "\r".
    with Path(path or DEFAULT_VOCAB_PATH).open(encoding="utf-8") as handle:
        entries = tuple(line[:-1] if line.endswith("\n") else line for line in handle)
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry in seen:
            raise ValueError(
                f"vocabulary {path or DEFAULT_VOCAB_PATH} repeats {entry!r} "
                f"on lines {seen[entry]} and {index} (0-based)"
            )
        seen[entry] = index
    return entries


def load_vocab(path: str | Path | None = None) -> dict[str, int]:
    """Token -> id (0-based line number). `None` reads the packaged `model/data/vocab.txt`."""
    entries = _read_vocab(None if path is None else str(path))
    return {entry: index for index, entry in enumerate(entries)}


def tokens_to_ids(tokens: Sequence[str], vocab: dict[str, int]) -> list[int]:
    """Vocabulary ids of `tokens`; a token not in the vocabulary maps to 0 (the space)."""
    return [vocab.get(token, UNKNOWN_ID) for token in tokens]


def batch_ids(texts: Sequence[str | None], vocab: dict[str, int]) -> torch.Tensor:
    """(B, L) int64 ids of several transcripts, right-padded with -1 to the longest one.

    `None` (no transcript) contributes an empty row, i.e. all padding. L is 0 when every item is
    empty or None.
    """
    rows = [tokens_to_ids(text_to_tokens(text), vocab) if text is not None else [] for text in texts]
    length = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)  # (B, L)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


def speech_token_ids(
    texts: Sequence[str | None], vocab: dict[str, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two inputs of `SpeechConditioner.forward` for a list of transcripts (None = none).

    Returns `(token_ids (B, L) int64 padded with -1, is_none (B,) bool)`; `vocab` defaults to the
    packaged vocabulary.
    """
    vocab = load_vocab() if vocab is None else vocab
    is_none = torch.tensor([text is None for text in texts], dtype=torch.bool)  # (B,)
    return batch_ids(texts, vocab), is_none
