"""Audio: probe uploads (decode end to end, measure, reject what is not usable) and decode them
to 16 kHz mono float32 for the engines."""

from gpuscribe.audio.decode import WHISPER_SAMPLE_RATE, decode
from gpuscribe.audio.probe import AudioInfo, probe

__all__ = ["WHISPER_SAMPLE_RATE", "AudioInfo", "decode", "probe"]
