"""batched/features.py on the CPU: the batch's log-mel features of chunks of any length up to a
window equal faster-whisper's (its `FeatureExtractor` over the chunk alone, then `pad_or_trim` to
3,000 frames) over the chunk's whole hops, and are zero past them (faster-whisper's extractor
gives one more frame, from the reflected tail of a short chunk)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuscribe.audio import HOP, MEL_FRAMES, WINDOW_SAMPLES
from gpuscribe.workers.engines.batched.features import MelFeatures

torch = pytest.importorskip("torch")
feature_extractor = pytest.importorskip("faster_whisper.feature_extractor")
faster_whisper_audio = pytest.importorskip("faster_whisper.audio")


def _faster_whisper(chunk: np.ndarray, n_mels: int) -> np.ndarray:
    features = feature_extractor.FeatureExtractor(feature_size=n_mels)(chunk)
    return faster_whisper_audio.pad_or_trim(features, MEL_FRAMES)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_a_batch_of_chunks_gives_faster_whispers_features(n_mels: int) -> None:
    rng = np.random.default_rng(0)
    chunks = [
        (rng.standard_normal(WINDOW_SAMPLES) * 0.1).astype(np.float32),  # a whole window
        (rng.standard_normal(7 * 16000) * 0.1).astype(np.float32),  # a short last window
        (rng.standard_normal(WINDOW_SAMPLES + 999) * 0.1).astype(np.float32),  # cut to one
    ]
    batch = MelFeatures(n_mels, torch.device("cpu"))(chunks).numpy()
    assert batch.shape == (3, n_mels, MEL_FRAMES)
    for got, chunk in zip(batch, chunks, strict=True):
        expected = _faster_whisper(chunk[:WINDOW_SAMPLES], n_mels)
        frames = min(chunk.size, WINDOW_SAMPLES) // HOP
        assert np.allclose(got[:, :frames], expected[:, :frames], atol=1e-4)
        assert not got[:, frames:].any()
