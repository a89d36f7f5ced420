"""The worker: claim loop, heartbeats and reaper (loop), child processes (executors, child)."""

from api.worker.executors import ChildHandle, SpawnExecutor
from api.worker.loop import Worker

__all__ = ["ChildHandle", "SpawnExecutor", "Worker"]
