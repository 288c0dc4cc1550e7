"""Why this node's workers failed, read from torchrun's output as it passes through the entrypoint.

When one rank of a gang dies, every other rank fails soon after with a communication error (gloo:
"Connection reset by peer"; NCCL: "remote process exited"), usually within the same second, and
every node's torchrun exits with code 1. Without more, the failure of rank 0 and the failure of the
rank that was really killed look alike. torchrun's `ChildFailedError` report names each failed worker
with its exit code or signal; the lines before it name the lost peer. From both, the entrypoint says
which of the two this node's failure was: its own (a worker killed by a signal, an exception of its
own) or a consequence of losing a peer (`peerLost` in the termination summary), so that the operator
can blame the rank that failed first (docs/entrypoint.md).
"""

from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass

from training_hub.launch.exit_codes import exit_code_for_signal_death

# What a collective or the c10d store reports when the process on the other end died or hung.
LOST_PEER_MARKERS = (
    "Connection reset by peer",  # gloo, c10d store
    "Connection closed by peer",  # gloo
    "ncclRemoteError",
    "remote process exited or there was a network error",  # NCCL
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",  # NCCL: a peer stopped taking part
)
_MAX_LINE = 300

# torchrun's ChildFailedError report: one entry per failed worker, "rank" then "exitcode".
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)\s*\(pid:")


@dataclass(frozen=True)
class WorkerExit:
    rank: int
    local_rank: int
    exit_code: int  # torchrun's convention: -N when killed by signal N

    @property
    def signal_name(self) -> str | None:
        if self.exit_code >= 0:
            return None
        try:
            return signal.Signals(-self.exit_code).name
        except ValueError:
            return f"signal {-self.exit_code}"


@dataclass(frozen=True)
class WorkerFailure:
    """This node's side of a failed run: its own fault, or the loss of a peer."""

    killed_by_signal: WorkerExit | None
    lost_peer: str | None  # the line that says so; None when a worker was killed here

    def describe(self) -> str:
        if self.killed_by_signal is not None:
            w = self.killed_by_signal
            return f"worker rank {w.rank} (local rank {w.local_rank}) was killed by {w.signal_name}"
        return f"a worker lost its connection to another rank, which probably failed first: {self.lost_peer}"

    def exit_code(self, default: int) -> int:
        """128+N when a worker here was killed by signal N (137: SIGKILL, e.g. the OOM killer), else `default`."""
        if self.killed_by_signal is not None:
            return exit_code_for_signal_death(self.killed_by_signal.exit_code)
        return default

    def summary_fields(self) -> dict[str, object]:
        return {"peerLost": True} if self.lost_peer is not None else {}


class TorchrunOutputWatch:
    """Fed every line of the child's stdout and stderr (from two relay threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rank: tuple[int, int] | None = None
        self.exits: list[WorkerExit] = []
        self.lost_peer: str | None = None

    def feed(self, line: str) -> None:
        with self._lock:
            if self.lost_peer is None and any(marker in line for marker in LOST_PEER_MARKERS):
                self.lost_peer = _clip(line.strip())
            if match := _RANK.match(line):
                self._rank = (int(match[1]), int(match[2]))
            elif (match := _EXITCODE.match(line)) and self._rank is not None:
                self.exits.append(WorkerExit(*self._rank, int(match[1])))
                self._rank = None

    def failure(self) -> WorkerFailure | None:
        """What the output says about the failure, or None when it says nothing (not a worker failure)."""
        with self._lock:
            killed = next((w for w in self.exits if w.exit_code < 0), None)
            if killed is not None:
                return WorkerFailure(killed, None)
            if self.lost_peer is not None:
                return WorkerFailure(None, self.lost_peer)
            return None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 1] + "…"
