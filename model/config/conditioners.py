"""The small conditioners' sections: sync features, transcript (speech) and the mel reference.

The conditioner ids are those of the released checkpoint: its key prefixes
(`conditioner.conditioners.<id>.`) are built from them, so they are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.config.checks import positive

OMNI_ID = "omni_prompt"
SYNC_ID = "sync_feature"
SPEECH_ID = "speech_prompt"
MEL_ID = "audio_input_prompt"
CONDITIONER_TYPES: dict[str, str] = {
    OMNI_ID: "qwen_omni",
    SYNC_ID: "sync_feature",
    SPEECH_ID: "tts-f5",
    MEL_ID: "mel_spec",
}

SYNC_DEFAULT_OUTPUT_DIM = 128  # constructor default of the sync conditioner
MEL_WINDOW_S = 10.0  # the mel conditioner's nominal input window
# In-features of the mel conditioner's `proj_sequence_features`: 1723 frames (a 10 s window at
# 44.1 kHz, hop 256). The reference hard-codes it whatever the config says; the released schema
# has no field for it, so a config may carry `num_frames` (our extension) and `audio-omni verify`
# reads it from the weights.
MEL_NUM_FRAMES = 1723

PACKAGED_VOCAB = Path(__file__).resolve().parent.parent / "data" / "vocab.txt"
RELEASED_VOCAB_PATH = "./audio_omni/data/vocab.txt"  # cwd-relative path written in the released file


@dataclass(frozen=True)
class SyncConfig:
    """Synchformer feature projection (`sync_feature`): [seq_in, 768] -> [seq_out, 768]."""

    seq_in: int = 240
    seq_out: int = SYNC_DEFAULT_OUTPUT_DIM

    def __post_init__(self) -> None:
        positive("sync.seq_in", self.seq_in)
        positive("sync.seq_out", self.seq_out)


@dataclass(frozen=True)
class SpeechConfig:
    """Transcript encoder (`speech_prompt`, F5-TTS style text encoder)."""

    vocab_file: Path
    seq_len: int
    proj_seq_len: int

    def __post_init__(self) -> None:
        positive("speech.seq_len", self.seq_len)
        positive("speech.proj_seq_len", self.proj_seq_len)


@dataclass(frozen=True)
class MelConfig:
    """Log-mel conditioner of a mono reference (`audio_input_prompt`).

    It has its own `sample_rate` and `hop_length`; `num_frames` is the fixed frame count of its
    sequence projection. The input window is the nominal 10 s at `sample_rate`, moved to the
    nearest length that gives exactly `num_frames` frames (441000 samples for the release).
    """

    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    sample_rate: int
    seq_len: int
    mask_ratio_start: float
    mask_ratio_end: float
    num_frames: int = MEL_NUM_FRAMES

    def __post_init__(self) -> None:
        for name in ("n_fft", "hop_length", "win_length", "n_mels", "sample_rate", "seq_len", "num_frames"):
            positive(f"mel.{name}", getattr(self, name))
        if self.win_length > self.n_fft:
            raise ValueError(f"mel.win_length = {self.win_length} must be <= mel.n_fft = {self.n_fft}")
        if not 0.0 <= self.mask_ratio_start <= self.mask_ratio_end <= 1.0:
            raise ValueError(
                f"mel mask ratios must satisfy 0 <= start <= end <= 1, got start={self.mask_ratio_start}, "
                f"end={self.mask_ratio_end}"
            )
        high = self.window_range[1]
        if high <= self.n_fft // 2:
            raise ValueError(
                f"mel.num_frames = {self.num_frames} at hop_length {self.hop_length} allows windows of at most "
                f"{high} samples; the centred STFT needs more than n_fft // 2 = {self.n_fft // 2}"
            )

    @property
    def window_range(self) -> tuple[int, int]:
        """Inclusive range of waveform lengths that give exactly `num_frames` centred STFT frames."""
        low = (self.num_frames - 1) * self.hop_length
        return low, low + self.hop_length - 1

    @property
    def window_samples(self) -> int:
        """Samples of the fixed input window (441000 at 44.1 kHz, hop 256, 1723 frames)."""
        low, high = self.window_range
        return min(max(round(MEL_WINDOW_S * self.sample_rate), low), high)

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate


def resolve_vocab_file(value: str, base_dir: Path | None) -> Path:
    """The speech vocabulary. The released cwd-relative path, or a file that does not exist, means the
    packaged copy (byte-identical to the released `vocab.txt`)."""
    if Path(value).as_posix() == Path(RELEASED_VOCAB_PATH).as_posix():
        return PACKAGED_VOCAB
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.resolve() if p.is_file() else PACKAGED_VOCAB
