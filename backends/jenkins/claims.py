"""Which ASCOB submission a Jenkins queue item was handed to, in this process.

Jenkins merges a trigger into an identical request that is still waiting in its queue and answers
with the *existing* queue item. A job that declares the run parameter (``ASCOB_RUN``) never sees
that: every trigger carries a unique value. For a job without it, the sign of a merge is the queue
item id itself: an item that was in the queue just before the trigger (the backend looks), or one
that was handed to another ASCOB run of this process (a request sent between that look and the
trigger) started nothing for this trigger.

This registry is the memory of the ids handed out. It is shared by every ``jenkinsBackend`` in the
process (keyed by the Jenkins server's URL, so two instance names for one server agree) and lives
only as long as the process: executors on other machines do not see it (docs/backends.md says
what that means). Once its item is seen to have left the queue, Jenkins can no longer answer a
trigger with it; the entry is still kept ``grace`` seconds, for a trigger merged just before the
item left whose answer is still on its way. An entry whose item is never seen again goes after
``ttl`` seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

__all__ = ["CLAIMS", "Claim", "QueueClaims"]


@dataclass(frozen=True)
class Claim:
    """One ASCOB submission: its run id and a nonce that tells two submissions of a run apart."""

    run_id: int
    token: str
    expires: float


class QueueClaims:
    """Queue item ids -> the submission that got them (thread-safe: the API's loop and the
    executor's may both use it)."""

    def __init__(self, ttl: float = 24 * 3600.0, grace: float = 60.0) -> None:
        self.ttl = ttl
        self.grace = grace
        self._owners: dict[tuple[str, int], Claim] = {}
        self._lock = threading.Lock()

    def claim(self, server: str, queue_id: int, run_id: int, token: str) -> Claim | None:
        """Record ``queue_id`` as this submission's; the *other* submission's claim if it has it."""
        now = time.monotonic()
        key = (server.rstrip("/"), queue_id)
        with self._lock:
            self._expire(now)
            current = self._owners.get(key)
            if current is not None and current.token != token:
                return current
            self._owners[key] = Claim(run_id, token, now + self.ttl)
            return None

    def owner(self, server: str, queue_id: int) -> Claim | None:
        """The submission that got ``queue_id``, if one of this process did."""
        with self._lock:
            self._expire(time.monotonic())
            return self._owners.get((server.rstrip("/"), queue_id))

    def release(self, server: str, queue_id: int) -> None:
        """The item has left the queue: forget it after the grace period."""
        key = (server.rstrip("/"), queue_id)
        with self._lock:
            current = self._owners.get(key)
            if current is not None:
                expires = min(current.expires, time.monotonic() + self.grace)
                self._owners[key] = replace(current, expires=expires)

    def __len__(self) -> int:
        with self._lock:
            return len(self._owners)

    def _expire(self, now: float) -> None:
        stale = [k for k, c in self._owners.items() if now >= c.expires]
        for key in stale:
            del self._owners[key]


CLAIMS = QueueClaims()
