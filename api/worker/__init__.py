"""The worker: claim loop, heartbeats and reaper (loop), per-kind job handlers (handlers), child
processes (executors, child) and what they say to each other (messages)."""

from api.worker.executors import ChildHandle, ForkserverExecutor
from api.worker.loop import Worker

__all__ = ["ChildHandle", "ForkserverExecutor", "Worker"]
