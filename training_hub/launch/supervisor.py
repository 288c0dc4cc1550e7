"""Run a child process (the trainer, or torchrun for preflight) as the container's PID 1 would.

- SIGTERM/SIGINT are recorded and forwarded to the child, so a preemption or suspend stops
  training and is reported as `preempted` instead of passing for success.
- The child's stdout is relayed through a `ConsoleWriter`, so progress lines printed meanwhile
  never land in the middle of one of its lines; its stderr goes to our stderr. `on_line` sees each
  complete line of both (preflight picks up rank 0's bandwidth report; both commands read torchrun's
  failure report: worker_failure.py).
- Whether the child finished before the signal came is decided by the child's result file: it is
  written, atomically, only once training returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import IO, Callable, Mapping, Sequence

from training_hub.launch.progress import ConsoleWriter

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A termination signal arrived while no child was running (e.g. during the rendezvous wait)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")


@dataclass
class SignalState:
    """Signals received by this process, forwarded to the child while there is one."""

    received: int | None = None
    finished_before_signal: bool = False
    child: subprocess.Popen | None = None
    done_marker: str | None = None  # a file that exists once the child's work is done
    # called once, on the first signal, unless the work was already done: e.g. write a provisional
    # summary, so that a SIGKILL at the end of the grace period still leaves "preempted" behind
    on_first_signal: Callable[[int], None] | None = None
    _previous: dict[int, object] = field(default_factory=dict)

    def install(self) -> "SignalState":
        for sig in FORWARDED_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        first = self.received is None
        if first:
            self.received = signum
            self.finished_before_signal = bool(self.done_marker and os.path.exists(self.done_marker))
            if self.on_first_signal is not None and not self.finished_before_signal:
                try:
                    self.on_first_signal(signum)
                except Exception:  # best effort: forwarding the signal matters more
                    pass
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass
        elif child is None and first:
            raise Interrupted(signum)


@dataclass(frozen=True)
class ChildExit:
    returncode: int  # Popen convention: -N when killed by signal N
    signal_received: int | None  # a termination signal this process got while the child ran
    finished_before_signal: bool


def run_child(
    command: Sequence[str],
    signals: SignalState,
    console: ConsoleWriter,
    *,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ChildExit:
    if signals.received is not None:  # signalled before we even started
        raise Interrupted(signals.received)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")  # progress of the child reaches the log as it happens
    # stderr is relayed too (to our stderr), so that `on_line` also sees tracebacks and torchrun's failure report.
    child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env)
    signals.child = child
    relays = [
        threading.Thread(target=_relay, args=(child.stdout, console, on_line), name="stdout-relay", daemon=True),
        threading.Thread(target=_relay, args=(child.stderr, _stderr_console(), on_line), name="stderr-relay",
                         daemon=True),
    ]
    for relay in relays:
        relay.start()
    if signals.received is not None and child.poll() is None:  # signal landed between the check and Popen
        child.send_signal(signals.received)
    returncode = child.wait()
    for relay in relays:
        relay.join(10)
    return ChildExit(returncode, signals.received, signals.finished_before_signal)


def _stderr_console() -> ConsoleWriter:
    return ConsoleWriter(getattr(sys.stderr, "buffer", None) or sys.__stderr__.buffer)


def _relay(stream: IO[bytes], console: ConsoleWriter, on_line: Callable[[str], None] | None) -> None:
    fd = stream.fileno()
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        try:
            console.relay(chunk)
        except Exception:  # our stdout is gone: keep draining, or the child blocks on a full pipe
            pass
        if on_line is not None:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                try:
                    on_line(line.decode("utf-8", "replace"))
                except Exception:  # an observer must never stop the relay (the child would block)
                    pass
            pending = pending[-65536:]  # a line without newline (progress bars) must not grow forever
    stream.close()
