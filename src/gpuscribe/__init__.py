"""gpuscribe: self-hosted Whisper speech-to-text that never runs a GPU out of memory."""

__version__ = "0.1.0"
