import io

import numpy as np
import pytest
import soundfile as sf

from orchestrator.audio_io import BadAudio, decode_audio, encode_audio, resample
from orchestrator.errors import PermanentError


def _wav(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt)
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


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"", "empty"), (b"RIFF\x00\x00garbage" * 10, "not a readable audio"), (None, "limit is 1 s")],
)
def test_bad_inputs_are_permanent(data, match):
    if data is None:
        data = _wav(np.zeros(44100 * 2, dtype=np.float32), 44100)
    with pytest.raises(BadAudio, match=match) as info:
        decode_audio(data, sample_rate=44100, max_duration_s=1, what="source")
    assert isinstance(info.value, PermanentError)


def test_encode_round_trips_and_is_deterministic():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((2, 4410)) * 0.1).astype(np.float32)
    for fmt in ("wav", "flac"):
        data = encode_audio(audio, 44100, fmt)
        assert data == encode_audio(audio, 44100, fmt)
        back, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == 44100 and back.shape == (4410, 2)
        np.testing.assert_allclose(back.T, audio, atol=1e-4)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="fmt"):
        encode_audio(np.zeros(10), 44100, "mp3")
    with pytest.raises(ValueError, match="to_hz"):
        resample(np.zeros(10), 44100, 5)
