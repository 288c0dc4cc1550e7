"""The pod watch: the pods the operator manages, straight into the reconciler's cache (no kopf handler).

Pods are four in five of the events a gang start brings, and none needs kopf's per-event machinery (a worker task
and queue per object, a body wrapper, handler bookkeeping): the reconciler only files the pod and debounces a look
at its job. Through a kopf handler, that machinery was ~40% of the operator's CPU in a 100-job burst
(docs/operator.md, Performance). The stream itself is still kopf's: a paged LIST, then a WATCH from its version with
bookmarks, reconnects, a fresh LIST after 410 Gone, and failed requests retried forever and logged as one line each
(watch_health.KopfRequestLog). It is filtered by the managed-by label on the server: kopf filtered its handler's
labels after receiving every pod of the namespace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

from sftjob_operator import labels

log = logging.getLogger("sftjob_operator")

SELECTOR = f"{labels.MANAGED_BY}={labels.MANAGED_BY_VALUE}"
RETRY_SECONDS = 2.0  # after a stream that failed in a way kopf does not retry itself


def pods_resource() -> Any:
    from kopf._cogs.structs import references

    return references.Resource(
        group="", version="v1", plural="pods", kind="Pod", singular="pod", namespaced=True,
        verbs=frozenset({"list", "watch"}),
    )


def select_managed_pods(settings: Any) -> None:
    """The label selector on kopf's list and watch requests for pods (theirs: not the operator's SFTJobs)."""
    settings.watching.label_selectors[lambda resource: resource.group == "" and resource.plural == "pods"] = SELECTOR


async def watch_pods(
    settings: Any,
    namespace: str | None,
    on_event: Callable[[str | None, Mapping[str, Any]], None],
    on_listed: Callable[[], None],
    *,
    watching: Any = None,
) -> None:
    """Forever: each pod event to `on_event(type, pod)` (type None: part of a listing), `on_listed()` after each
    listing (also an empty one). `namespace` None: every namespace. Never gives up (an outage is retried)."""
    if watching is None:
        from kopf._cogs.clients import watching
    resource = pods_resource()
    where = f"namespace {namespace}" if namespace else "all namespaces"
    while True:
        try:
            async for event in watching.infinite_watch(settings=settings, resource=resource, namespace=namespace):
                if event is watching.Bookmark.LISTED:
                    on_listed()
                elif isinstance(event, Mapping) and event.get("type") != "BOOKMARK" and event.get("object"):
                    on_event(event.get("type"), event["object"])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - an ERROR event kopf does not retry (not 410): list again
            log.warning("the pod watch in %s failed (%s: %s); listing again in %.0f s",
                        where, type(error).__name__, str(error)[:200], RETRY_SECONDS)
        await asyncio.sleep(RETRY_SECONDS)
