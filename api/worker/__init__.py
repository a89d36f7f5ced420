"""The worker: claim loop, heartbeats and reaper (loop), child processes (executors, child)."""

from api.worker.executors import ChildHandle, ForkserverExecutor
from api.worker.loop import Worker

__all__ = ["ChildHandle", "ForkserverExecutor", "Worker"]
