"""Audio: probe uploads (decode end to end, measure, reject what is not usable) and decode them
to 16 kHz mono float32 for the engines (`probe.py`, `decode.py`).

This module owns what every Whisper model takes: its sample rate and its 30 s window. It imports
nothing (no PyAV), so that a worker, an engine or the simulator can read these constants without
loading the decoder.
"""

SAMPLE_RATE = 16_000  # Hz: the audio every Whisper model reads
WINDOW_SECONDS = 30.0  # Whisper reads audio in windows of this length (its log-mel frame)
WINDOW_SAMPLES = int(WINDOW_SECONDS) * SAMPLE_RATE  # samples of one window
# Whisper's log-mel spectrogram of one window: 25 ms frames every 10 ms.
N_FFT = 400  # samples of one frame
HOP = 160  # samples between frames
MEL_FRAMES = WINDOW_SAMPLES // HOP  # 3000 frames per window

__all__ = ["HOP", "MEL_FRAMES", "N_FFT", "SAMPLE_RATE", "WINDOW_SAMPLES", "WINDOW_SECONDS"]
