"""Backends' claims waiting in this hub process, which a new job is handed to directly.

A backend with free workers long-polls its claim (``_tasks.claim_jobs``). Without this, a
request stores its job as pending and wakes the queue; the claim then runs a pass of its own to
take it: a wake-up, a thread hop and a transaction between a request and its backend. With it,
the request's own transaction gives the job to a claim waiting here (started, leased to that
backend, the backend's write access checked again) and answers that claim once it commits.

Only claims in this process are known here. Backends on other replicas (PostgreSQL) hear of a
pending job through the queue's wake-up as before; so do these when none of them serves the task.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Waiter:
    """One waiting claim: the backend, who it is, the tasks it serves, and the job handed to it."""

    def __init__(self, backend_id: str, client_id: str | None, user_id: str | None, keys: set[str],
                 wake: Any) -> None:
        self.backend_id = backend_id
        self.client_id = client_id
        self.user_id = user_id
        self.keys = keys  # "task_type:task_name"
        self.wake = wake  # called (on the loop) once the job, or None, is in place
        self.job: dict[str, Any] | None = None
        self.settled = asyncio.Event()  # the request that took it is done with it
        self.gone = False  # its claim stopped waiting (answered, or its client left)


class Waiters:
    """Waiting claims by project; taken from any thread (a request's transaction), in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_project: dict[str, list[Waiter]] = {}

    def add(self, project_id: str, waiter: Waiter) -> None:
        with self._lock:
            self._by_project.setdefault(project_id, []).append(waiter)

    def withdraw(self, project_id: str, waiter: Waiter) -> bool:
        """Stop offering ``waiter``; False when a request took it already (its job is on the way)."""
        with self._lock:
            waiting = self._by_project.get(project_id, [])
            if waiter not in waiting:
                return False
            waiting.remove(waiter)
            if not waiting:
                del self._by_project[project_id]
            return True

    def take(self, project_id: str, key: str) -> Waiter | None:
        """The longest-waiting claim that serves ``key``, no longer offered to others."""
        with self._lock:
            waiting = self._by_project.get(project_id)
            for waiter in waiting or ():
                if key in waiter.keys:
                    waiting.remove(waiter)  # type: ignore[union-attr]
                    if not waiting:
                        del self._by_project[project_id]
                    return waiter
        return None

    def waiting(self, project_id: str) -> int:
        with self._lock:
            return len(self._by_project.get(project_id, ()))
