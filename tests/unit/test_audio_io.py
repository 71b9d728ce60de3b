import io

import numpy as np
import pytest
import soundfile as sf

from orchestrator.audio_io import (
    MAX_CHANNELS,
    AudioInfo,
    BadAudio,
    decode_audio,
    encode_audio,
    probe_audio,
    resample,
)
from orchestrator.errors import PermanentError


def _wav(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_decode_mixes_to_mono_and_resamples():
    t = np.arange(16000) / 16000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    out = decode_audio(_wav(stereo, 16000), sample_rate=44100, max_duration_s=5)
    assert out.ndim == 1 and out.dtype == np.float32
    assert abs(out.shape[0] - 44100) <= 1
    assert 0.2 < np.abs(out).max() < 0.3  # mixed: half of the left channel's 0.5 peak


def test_decode_keeps_channels_when_asked():
    stereo = np.zeros((1000, 2), dtype=np.float32)
    stereo[:, 0] = 0.25
    out = decode_audio(_wav(stereo, 44100, "FLAC"), sample_rate=44100, max_duration_s=1, mono=False)
    assert out.shape == (1000, 2)
    np.testing.assert_allclose(out[:, 0], 0.25, atol=1e-4)


def test_decode_reads_files_longer_than_one_block():
    ramp = np.linspace(-0.5, 0.5, 200_000, dtype=np.float32)  # > 3 blocks of 65536 frames
    out = decode_audio(_wav(ramp, 48000, subtype="FLOAT"), sample_rate=48000, max_duration_s=10)
    np.testing.assert_array_equal(out, ramp)


@pytest.mark.parametrize(
    ("fmt", "subtype", "channels"),
    [
        ("WAV", "PCM_U8", 1),
        ("WAV", "PCM_16", 2),
        ("WAV", "PCM_24", 1),
        ("WAV", "PCM_32", 2),
        ("WAV", "FLOAT", 1),
        ("WAV", "DOUBLE", 2),
        ("WAVEX", "PCM_16", 3),
        ("WAVEX", "FLOAT", MAX_CHANNELS),
        ("FLAC", "PCM_16", 2),
        ("FLAC", "PCM_24", 1),
    ],
)
def test_every_accepted_encoding_probes_and_decodes(fmt, subtype, channels):
    samples = np.full((2205, channels), 0.25, dtype=np.float32)
    data = _wav(samples, 22050, fmt, subtype)
    info = probe_audio(data, max_duration_s=1)
    expected = "flac" if fmt == "FLAC" else "wav"
    assert info == AudioInfo(format=expected, sample_rate=22050, channels=channels, frames=2205)
    assert info.duration_s == pytest.approx(0.1)
    out = decode_audio(data, sample_rate=22050, max_duration_s=1, mono=False)
    assert out.shape == (2205, channels)
    np.testing.assert_allclose(out, 0.25, atol=1 / 64)  # 8-bit is the coarsest


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "is empty"),
        (b"RIFF\x00\x00garbage" * 10, "not a readable audio"),
        (b"OggS" + bytes(300), "not a readable audio"),
        (None, "lasts 2.0 s; the limit is 1 s"),
    ],
)
def test_bad_inputs_are_permanent_and_named(data, match):
    if data is None:
        data = _wav(np.zeros(44100 * 2, dtype=np.float32), 44100)
    for call in (
        lambda: decode_audio(data, sample_rate=44100, max_duration_s=1, what="source"),
        lambda: probe_audio(data, max_duration_s=1, what="source"),
    ):
        with pytest.raises(BadAudio, match=match) as info:
            call()
        assert isinstance(info.value, PermanentError)
        assert str(info.value).startswith("source ") and str(info.value) == f"source {info.value.reason}"
        assert "0x" not in str(info.value) and "<" not in str(info.value)


def _extensible(valid_bits: int, container_bits: int) -> bytes:
    """A mono WAVE_FORMAT_EXTENSIBLE PCM file of 100 frames at 8 kHz with these sample widths."""
    import struct

    block = container_bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 8000 * block, block, container_bits)
    guid_pcm = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_PCM
    fmt += struct.pack("<HHI", 22, valid_bits, 0x4) + guid_pcm  # cbSize, valid bits, channel mask, sub-format
    data = bytes(100 * block)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_extensible_wav_sample_widths():
    assert probe_audio(_extensible(24, 32), max_duration_s=1).frames == 100  # 24 valid bits in 32
    assert probe_audio(_extensible(16, 16), max_duration_s=1).frames == 100
    with pytest.raises(BadAudio, match="has 20-bit integer PCM samples"):
        probe_audio(_extensible(20, 24), max_duration_s=1)
    with pytest.raises(BadAudio, match="has 12-bit integer PCM samples"):
        decode_audio(_extensible(12, 12), sample_rate=8000, max_duration_s=1)


def test_other_libsndfile_formats_are_refused_by_name():
    aiff = _wav(np.zeros(1000, dtype=np.float32), 44100, "AIFF", "PCM_16")
    with pytest.raises(BadAudio, match="is AIFF audio; only WAV and FLAC are accepted"):
        probe_audio(aiff, max_duration_s=1)


def test_sample_rate_bounds():
    low = _wav(np.zeros(400, dtype=np.float32), 4000)
    with pytest.raises(BadAudio, match="sample rate of 4000 Hz"):
        decode_audio(low, sample_rate=44100, max_duration_s=1)


def test_encode_round_trips_and_is_deterministic():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((2, 4410)) * 0.1).astype(np.float32)
    for fmt in ("wav", "flac"):
        data = encode_audio(audio, 44100, fmt)
        assert data == encode_audio(audio, 44100, fmt)
        back, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == 44100 and back.shape == (4410, 2)
        np.testing.assert_allclose(back.T, audio, atol=1e-4)
        assert probe_audio(data, max_duration_s=1) == AudioInfo(fmt, 44100, 2, 4410)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="fmt"):
        encode_audio(np.zeros(10), 44100, "mp3")
    with pytest.raises(ValueError, match="to_hz"):
        resample(np.zeros(10), 44100, 5)
    with pytest.raises(ValueError, match="max_duration_s"):
        probe_audio(b"x", max_duration_s=float("inf"))
