"""The faster-whisper engine (CTranslate2), on the CPU or one CUDA device.

Results match faster-whisper called directly with the same settings: the options are passed as
given (`compute_type` "default" stays CTranslate2's default). `batch_size` above 1 runs
faster-whisper's batched pipeline over the VAD's speech chunks, or over fixed 30 s windows
where VAD is off.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuscribe.audio import SAMPLE_RATE, WINDOW_SECONDS
from gpuscribe.domain import Segment, Transcript, TranscriptionOptions, Word
from gpuscribe.memory.architectures import weights_bytes as architecture_weights_bytes
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines import rss_bytes
from gpuscribe.workers.messages import DeviceRef
from gpuscribe.workers.models import FASTER_WHISPER, ModelSource, resolve_model

log = logging.getLogger(__name__)


class FasterWhisperEngine:
    name = FASTER_WHISPER

    def __init__(self, cpu_threads: int = 0, models_dir: str = "", allow_downloads: bool = False):
        self.cpu_threads = cpu_threads
        self.models_dir = models_dir
        self.allow_downloads = allow_downloads

    def load(self, model: str, device: DeviceRef, compute_type: str) -> FasterWhisperModel:
        from faster_whisper import WhisperModel

        source = resolve_model(
            model, FASTER_WHISPER, models_dir=self.models_dir, allow_downloads=self.allow_downloads
        )
        cuda = device.kind == DeviceKind.CUDA
        before = rss_bytes()
        whisper = WhisperModel(
            _model_argument(source),
            device="cuda" if cuda else "cpu",
            device_index=0,  # the worker process sees only its own GPU
            compute_type=compute_type,
            cpu_threads=self.cpu_threads,
            download_root=self._download_root(source),
            local_files_only=not source.download,
        )
        measured = rss_bytes() - before
        figure = _weights_figure(source.name, compute_type, cuda=cuda, rss_delta=measured)
        log.info(
            "loaded %s (%s, %s) on %s: weights %d bytes",
            source.name,
            compute_type,
            source.path or source.hub_id,
            device.name,
            figure,
        )
        return FasterWhisperModel(whisper, figure)

    def _download_root(self, source: ModelSource) -> str | None:
        if not source.download or not self.models_dir:
            return None
        return f"{self.models_dir}/{FASTER_WHISPER}"


class FasterWhisperModel:
    """A loaded WhisperModel: one per (model, compute type) in a worker, shared by its tasks."""

    def __init__(self, whisper: Any, weights_bytes: int):
        self._whisper: Any = whisper
        self.weights_bytes = weights_bytes

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        on_segment: Callable[[Segment, float], None],
        should_stop: Callable[[], bool],
    ) -> Transcript:
        if should_stop():
            raise TaskCancelled("cancelled before it started")
        raw_segments, info = self._run(audio, options)
        duration = float(info.duration) or audio.size / SAMPLE_RATE
        segments = _collect(raw_segments, duration, on_segment, should_stop)
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            language=info.language,
            duration=duration,
            segments=tuple(segments),
            task=options.task,
        )

    def _run(self, audio: npt.NDArray[np.float32], options: TranscriptionOptions) -> Any:
        kwargs: dict[str, Any] = {
            "language": options.language,
            "task": options.task.value,
            "beam_size": options.beam_size,
            "word_timestamps": options.word_timestamps,
            "vad_filter": options.vad_filter,
            "initial_prompt": options.initial_prompt,
            "temperature": options.temperature,
        }
        if options.batch_size <= 1:
            return self._whisper.transcribe(audio, **kwargs)
        from faster_whisper import BatchedInferencePipeline

        if not options.vad_filter:
            kwargs["clip_timestamps"] = _windows(audio.size / SAMPLE_RATE)
        pipeline = BatchedInferencePipeline(self._whisper)
        return pipeline.transcribe(audio, batch_size=options.batch_size, **kwargs)

    def unload(self) -> None:
        whisper, self._whisper = self._whisper, None
        if whisper is not None:
            whisper.model.unload_model()
            del whisper
        gc.collect()


def _collect(
    raw_segments: Iterable[Any],
    duration: float,
    on_segment: Callable[[Segment, float], None],
    should_stop: Callable[[], bool],
) -> list[Segment]:
    """Drain faster-whisper's lazy generator, stopping between segments. Each segment is
    reported once the next one is known, so the last one is reported with progress 1."""
    segments: list[Segment] = []
    for raw in raw_segments:
        if segments:
            on_segment(segments[-1], _progress(segments[-1].end, duration))
        if should_stop():
            done = segments[-1].end if segments else 0.0
            raise TaskCancelled(f"cancelled at {done:.1f} s of {duration:.1f} s")
        segments.append(_segment(len(segments), raw))
    if segments:
        on_segment(segments[-1], 1.0)
    return segments


def _segment(index: int, raw: Any) -> Segment:
    words = tuple(
        Word(float(w.start), float(w.end), str(w.word), float(w.probability))
        for w in (raw.words or ())
    )
    return Segment(
        id=index,
        start=float(raw.start),
        end=float(raw.end),
        text=str(raw.text),
        words=words,
        avg_logprob=float(raw.avg_logprob),
        no_speech_prob=float(raw.no_speech_prob),
        compression_ratio=float(raw.compression_ratio),
        temperature=float(raw.temperature or 0.0),
        tokens=tuple(int(t) for t in raw.tokens),
    )


def _progress(end: float, duration: float) -> float:
    if duration <= 0:
        return 1.0
    return min(1.0, max(0.0, end / duration))


def _windows(duration: float) -> list[dict[str, float]]:
    count = max(1, int(np.ceil(duration / WINDOW_SECONDS)))
    return [
        {"start": i * WINDOW_SECONDS, "end": min((i + 1) * WINDOW_SECONDS, duration)}
        for i in range(count)
    ]


def _model_argument(source: ModelSource) -> str:
    return source.path if source.path is not None else source.hub_id


def _weights_figure(model: str, compute_type: str, *, cuda: bool, rss_delta: int) -> int:
    """The RSS growth of loading on the CPU; on CUDA (or where RSS did not grow) the size of the
    published architecture in this compute type, for the worker to replace by a measurement."""
    if not cuda and rss_delta > 0:
        return rss_delta
    return architecture_weights_bytes(model, compute_type, cuda=cuda) or 0
