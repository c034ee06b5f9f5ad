"""Starting a Jenkins build: one trigger, and a job triggered as it is.

:func:`trigger` sends one ``buildWithParameters`` (or ``build`` for a job without parameters) and
sorts its failures: :class:`~backends.base.SubmitRefused` when Jenkins certainly queued nothing
(an answer below 500, no connection), any other exception when the outcome is unknown (the run
ends IN_DOUBT).

:class:`AsIs` triggers a job that does not declare the run parameter. Jenkins merges a trigger
into an identical request still waiting in its queue and answers with that item; the merged
trigger started nothing of its own. A merge shows as an item that was in the job's queue just
before the trigger (whoever sent it: another executor, a user, a timer), or as an item another
ASCOB run of this process got (:mod:`backends.jenkins.claims`; a request sent between that look
and the trigger). Then :class:`AsIs` waits until the item has left the queue and triggers again,
for at most ``merge_wait`` seconds in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from backends.base import OutcomeUnknown, SubmitRefused
from backends.jenkins.claims import QueueClaims
from backends.jenkins.client import JenkinsClient, job_url_path
from backends.kit import CALL_ERRORS, SystemHTTPError, describe

__all__ = ["AsIs", "declared_parameters", "has_left_queue", "trigger"]

log = logging.getLogger(__name__)

QUEUE_POLL = 0.5  # seconds between looks at a queue item a merged trigger waits for
MAX_TRIGGERS = 10  # merged triggers in a row before a submission gives up


def declared_parameters(definition: Mapping[str, Any]) -> tuple[bool, set[str]]:
    """Whether the job is parameterized, and the names of its parameters."""
    parameterized, names = False, set()
    for prop in definition.get("property") or []:
        found = prop.get("parameterDefinitions") if isinstance(prop, dict) else None
        if isinstance(found, list):
            parameterized = True
            names |= {str(p.get("name")) for p in found if isinstance(p, dict)}
    return parameterized, names


def has_left_queue(item: Mapping[str, Any]) -> bool:
    """A ``Queue$LeftItem`` (built or cancelled) rather than an item still waiting."""
    return (
        str(item.get("_class", "")).endswith("$LeftItem")
        or bool(item.get("cancelled"))
        or isinstance(item.get("executable"), dict)
    )


async def trigger(
    client: JenkinsClient, project: str, where: str, parameters: dict[str, str] | None
) -> int:
    """One trigger (``buildWithParameters``, or ``build`` when ``parameters`` is None): the queue
    item id. SubmitRefused when Jenkins certainly did not queue it; any other exception leaves
    the outcome unknown."""
    try:
        if parameters is None:
            return await client.build(project)
        return await client.build_with_parameters(project, parameters)
    except SystemHTTPError as exc:
        if exc.status_code < 500:
            raise SubmitRefused(f"{where}: {exc}") from exc
        raise OutcomeUnknown(f"{where}: trigger answered {exc}; outcome unknown") from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise SubmitRefused(f"{where}: cannot connect ({describe(exc)})") from exc


@dataclass
class AsIs:
    """Triggers one ASCOB run's build of a job without the run parameter."""

    client: JenkinsClient
    claims: QueueClaims
    server: str  # the instance's URL: the claims' key
    project: str
    where: str
    parameters: dict[str, str] | None  # None: a job without parameters (``build``)
    run_id: int
    run_parameter: str
    merge_wait: float

    async def send(self) -> tuple[int, str | None]:
        """The queue item of this run's own request, and what was done to get it (or None)."""
        token = uuid.uuid4().hex
        began = time.monotonic()
        deadline = began + self.merge_wait
        merged: list[str] = []
        while True:
            before = await self._queued_items()
            queue_id = await trigger(self.client, self.project, self.where, self.parameters)
            if queue_id in before:
                owner = self.claims.owner(self.server, queue_id)
                whose = f"run {owner.run_id}" if owner else "a request already in the queue"
            else:
                owner = self.claims.claim(self.server, queue_id, self.run_id, token)
                if owner is None:
                    break
                whose = f"run {owner.run_id}"
            merged.append(f"{queue_id} ({whose})")
            log.warning(
                "run %s: %s: Jenkins merged the trigger into queue item %s (%s); "
                "triggering again once it has left the queue",
                self.run_id,
                self.where,
                queue_id,
                whose,
            )
            await self._wait_until_left(queue_id, deadline, whose)
            self.claims.release(self.server, queue_id)
            if len(merged) >= MAX_TRIGGERS:
                raise SubmitRefused(
                    f"{self.where}: Jenkins merged {len(merged)} triggers in a row into other "
                    f"requests' queue items ({', '.join(merged)}); nothing was started for this run"
                )
        if not merged:
            return queue_id, None
        items = "queue item" if len(merged) == 1 else "queue items"
        return queue_id, (
            f"own build: Jenkins merged the trigger into {items} {', '.join(merged)}; "
            f"triggered again once it had left the queue, after {time.monotonic() - began:.1f} s"
        )

    async def _queued_items(self) -> set[int]:
        """Ids of the job's items in the queue now (none known if the queue cannot be read)."""
        suffix = f"/{job_url_path(self.project)}/"
        try:
            items = await self.client.queue_items()
        except CALL_ERRORS as exc:
            log.warning(
                "%s: cannot read the queue before the trigger: %s", self.where, describe(exc)
            )
            return set()
        return {
            int(item["id"])
            for item in items
            if isinstance(item.get("task"), dict)
            and str(item["task"].get("url", "")).endswith(suffix)
            and str(item.get("id", "")).isdigit()
        }

    async def _wait_until_left(self, queue_id: int, deadline: float, whose: str) -> None:
        """Poll the queue item until it has left the queue (built, cancelled or forgotten);
        SubmitRefused at ``deadline``: this run's request was merged, nothing of its own ran."""
        while True:
            try:
                item = await self.client.queue_item(queue_id)
                if item is None or has_left_queue(item):
                    return
            except CALL_ERRORS as exc:
                log.warning("%s: reading queue item %s: %s", self.where, queue_id, describe(exc))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SubmitRefused(
                    f"{self.where}: Jenkins merged this run's request into queue item {queue_id} "
                    f"({whose}), which was still waiting after {self.merge_wait:g} s "
                    f"(merge_wait); nothing was started for this run. Declare a string "
                    f"parameter {self.run_parameter} in the job so that Jenkins never merges "
                    "ASCOB's requests"
                )
            await asyncio.sleep(min(QUEUE_POLL, remaining))
