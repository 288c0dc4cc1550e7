"""Why this node's workers failed, read from torchrun's output as it passes through the entrypoint.

When one rank of a gang dies, every other rank fails soon after with a communication error (gloo:
"Connection reset by peer"; NCCL: "remote process exited"), usually within the same second, and
every node's torchrun exits with code 1. Without more, the failure of rank 0 and the failure of the
rank that was really killed look alike. torchrun's `ChildFailedError` report names each failed worker
with its exit code or signal; the lines before it name the lost peer. From both, the entrypoint says
which of the two this node's failure was: its own (a worker killed by a signal other than torchrun's
own SIGTERM, an exception of its own) or a consequence of losing a peer (`peerLost` in the termination
summary: the exception of the node's first failed worker says so), so that the operator can blame the
rank that failed first (docs/entrypoint.md).
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

# torchrun's ChildFailedError report: one entry per failed worker, "rank" then "exitcode"; the first observed
# failure comes last, under its own heading.
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)\s*\(pid:")
_ROOT_CAUSE = "Root Cause (first observed failure):"
# torch.distributed prefixes a worker's uncaught exception with its global rank ("[rank3]: RuntimeError: ...").
_RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:")
# torchrun stops the other workers with SIGTERM once one failed: that signal is never the cause.
_STOPPED_BY_TORCHRUN = -signal.SIGTERM


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
        self._in_root_cause = False
        self.exits: list[WorkerExit] = []
        self.root_cause: WorkerExit | None = None
        self.lost_peer: dict[int | None, str] = {}  # the first such line of each global rank (None: no prefix)

    def feed(self, line: str) -> None:
        with self._lock:
            if any(marker in line for marker in LOST_PEER_MARKERS):
                prefix = _RANK_PREFIX.match(line)
                self.lost_peer.setdefault(int(prefix[1]) if prefix else None, _clip(line.strip()))
            if _ROOT_CAUSE in line:
                self._in_root_cause = True
            elif match := _RANK.match(line):
                self._rank = (int(match[1]), int(match[2]))
            elif (match := _EXITCODE.match(line)) and self._rank is not None:
                self.exits.append(WorkerExit(*self._rank, int(match[1])))
                if self._in_root_cause:
                    self.root_cause, self._in_root_cause = self.exits[-1], False
                self._rank = None

    def explain(self, message: str, code: int) -> tuple[str, int, dict[str, object]]:
        """A failed run's message and exit code told what this node's side of it was, with the summary's extra
        fields; unchanged (and none) when the output says nothing."""
        failure = self.failure()
        if failure is None:
            return message, code, {}
        return f"{failure.describe()}. {message}", failure.exit_code(code), failure.summary_fields()

    def failure(self) -> WorkerFailure | None:
        """What the output says about the failure, or None when it says nothing (not a worker failure)."""
        with self._lock:
            killed = next((w for w in self.exits if w.exit_code < 0 and w.exit_code != _STOPPED_BY_TORCHRUN), None)
            if killed is not None:
                return WorkerFailure(killed, None)
            # The first worker to fail here decides: its own exception must say it lost a peer. Other local workers,
            # which torchrun stopped afterwards, may well complain of a lost peer too: they are not the cause.
            if self.root_cause is not None:
                line = self.lost_peer.get(self.root_cause.rank)
            else:  # no report (torchrun itself was killed?): any line of the node
                line = next(iter(self.lost_peer.values()), None)
            return None if line is None else WorkerFailure(None, line)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 1] + "…"
