"""Counting API requests from the API server's audit log (a cluster started with `start_cluster(audit=True)`).

The policy logs every request at Metadata level (who, verb, resource; no bodies) and only at ResponseComplete, so each
request is one line and the API server's extra work stays small. Off by default: only the tests and benchmarks that
count requests pay for it.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

# One event per request (ResponseComplete; a watch is logged when it ends), Metadata only. Panic stays: a request
# the API server failed on is still a request.
POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}


@dataclass(frozen=True)
class Request:
    """One audited API request."""

    received: float  # wall-clock seconds (time.time()) the API server received it
    user: str
    user_agent: str
    verb: str  # Kubernetes' verb: get, list, watch, create, update, patch, delete, ...
    resource: str  # "pods", "pods/log", "sftjobs/status"; non-resource requests: their path ("/readyz")
    namespace: str
    name: str
    code: int

    @property
    def kind(self) -> str:
        """`verb resource`, the key requests are usually counted by."""
        return f"{self.verb} {self.resource}"


def _timestamp(text: str) -> float:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse(lines: Iterable[str]) -> Iterator[Request]:
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line, while the API server is still writing it
        ref = event.get("objectRef") or {}
        resource = ref.get("resource") or event.get("requestURI", "").split("?", 1)[0]
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        yield Request(
            received=_timestamp(event.get("requestReceivedTimestamp") or event["stageTimestamp"]),
            user=(event.get("user") or {}).get("username", ""),
            user_agent=event.get("userAgent", ""),
            verb=event.get("verb", ""),
            resource=resource,
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            code=(event.get("responseStatus") or {}).get("code", 0),
        )


def log_files(path: str | Path) -> list[Path]:
    """The log and its rotated parts, oldest first. The API server rotates its audit log at --audit-log-maxsize
    (0, the default, means lumberjack's 100 MB: a long benchmark passes it), renaming it to <name>-<time><ext>."""
    path = Path(path)
    rotated = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"), key=lambda part: part.stat().st_mtime)
    return [*rotated, *([path] if path.exists() else [])]


def requests(path: str | Path, since: float = 0.0, until: float = float("inf"),
             where: Callable[[Request], bool] | None = None) -> list[Request]:
    """Requests received in [since, until] (time.time() seconds) that `where` accepts, rotated parts included."""
    found: list[Request] = []
    for part in log_files(path):
        with open(part, encoding="utf-8", errors="replace") as log:
            found += [r for r in parse(log) if since <= r.received <= until and (where is None or where(r))]
    return found


def count(found: Iterable[Request], key: Callable[[Request], object] = lambda r: r.kind) -> collections.Counter:
    """How many requests per key (default `verb resource`, e.g. {"create pods": 4, "patch sftjobs/status": 1})."""
    return collections.Counter(key(r) for r in found)


def by_user_agent(prefix: str) -> Callable[[Request], bool]:
    """Requests whose user agent starts with `prefix` (kopf: "kopf/", client-go programs: their binary's name)."""
    return lambda r: r.user_agent.startswith(prefix)


class Tail:
    """Reads an audit log as it grows: each `read()` returns the requests logged since the previous one (a benchmark
    that counts many windows of a long log reads each line once). Follows the log through a rotation: the file it
    holds open is read to its end before the new one is read from its start (before, a rotation made every later
    read empty, and a burst was counted as 0 requests per job)."""

    def __init__(self, path: str | Path, from_end: bool = True) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - held across reads, closed by close()
        if from_end:
            self._file.seek(0, 2)
        self._partial = b""

    def read(self) -> list[Request]:
        data = self._file.read()
        if self._rotated():
            data += self._file.read()  # the rest of the renamed part, written before the rename
            self._file.close()
            self._file = open(self.path, "rb")  # noqa: SIM115
            data += self._file.read()
        data, self._partial = self._partial + data, b""
        complete = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
        data, self._partial = data[:complete], data[complete:]
        return list(parse(data.decode("utf-8", "replace").splitlines()))

    def _rotated(self) -> bool:
        try:
            return self.path.stat().st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False  # renamed, the new file not created yet: the next read switches

    def close(self) -> None:
        self._file.close()
