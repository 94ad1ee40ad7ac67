"""The durable store: tasks, their history, results and calibration samples."""

from gpuscribe.store.base import Claim, QueueCounts, QueueLimitReached, StaleLease, TaskStore

__all__ = ["Claim", "QueueCounts", "QueueLimitReached", "StaleLease", "TaskStore"]
