"""The pod watch (pod_watch.py): kopf's stream of pod events into the reconciler, server-side filtered."""

from __future__ import annotations

import asyncio
import types

import kopf
import pytest

from sftjob_operator import labels, pod_watch


def _pod(name: str, version: str) -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class _Watching(types.SimpleNamespace):
    """kopf's watching module as pod_watch uses it: infinite_watch replays `streams`, one per call (then blocks)."""

    def __init__(self, *streams) -> None:
        from kopf._cogs.clients.watching import Bookmark

        super().__init__(Bookmark=Bookmark, calls=[])
        self.streams = list(streams)

    async def infinite_watch(self, *, settings, resource, namespace):
        self.calls.append((resource.plural, resource.group, namespace))
        stream = self.streams.pop(0) if self.streams else None
        if stream is None:
            await asyncio.Event().wait()  # forever, as the real one
        for item in stream:
            if isinstance(item, BaseException):
                raise item
            yield item


def _run(watching, namespace="ns", until=lambda seen: False):
    seen = []

    async def scenario():
        task = asyncio.ensure_future(pod_watch.watch_pods(
            kopf.OperatorSettings(), namespace, lambda kind, pod: seen.append((kind, pod["metadata"]["name"])),
            lambda: seen.append(("LISTED", None)), watching=watching,
        ))
        for _ in range(200):
            await asyncio.sleep(0)
            if until(seen) or task.done():
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    return seen


def test_listing_then_events_reach_the_reconciler_in_order_without_bookmarks():
    from kopf._cogs.clients.watching import Bookmark

    watching = _Watching([
        {"type": None, "object": _pod("a", "1")},
        Bookmark.LISTED,
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}},
        {"type": "MODIFIED", "object": _pod("a", "6")},
        {"type": "DELETED", "object": _pod("a", "7")},
    ])
    seen = _run(watching, until=lambda seen: len(seen) == 4)
    assert seen == [(None, "a"), ("LISTED", None), ("MODIFIED", "a"), ("DELETED", "a")]
    assert watching.calls == [("pods", "", "ns")]


def test_a_failed_stream_is_listed_again_never_given_up(monkeypatch, caplog):
    from kopf._cogs.clients.watching import Bookmark, WatchingError

    monkeypatch.setattr(pod_watch, "RETRY_SECONDS", 0)
    watching = _Watching(
        [{"type": None, "object": _pod("a", "1")}, Bookmark.LISTED, WatchingError("Error in the watch-stream: 500")],
        [Bookmark.LISTED],  # listed again: empty
    )
    seen = _run(watching, namespace=None, until=lambda seen: len(seen) == 3)
    assert seen == [(None, "a"), ("LISTED", None), ("LISTED", None)]
    assert watching.calls == [("pods", "", None), ("pods", "", None)]  # None: every namespace
    assert "the pod watch in all namespaces failed (WatchingError" in caplog.text


def test_kopf_lists_and_watches_only_the_operators_pods():
    from kopf._cogs.structs.references import Resource

    settings = kopf.OperatorSettings()
    pod_watch.select_managed_pods(settings)
    assert settings.watching.label_selectors.collect(pod_watch.pods_resource()) == [
        f"{labels.MANAGED_BY}={labels.MANAGED_BY_VALUE}"
    ]
    sftjobs = Resource("training-hub.io", "v1alpha1", "sftjobs", kind="SFTJob", namespaced=True)
    assert settings.watching.label_selectors.collect(sftjobs) == []  # the jobs carry no such label
