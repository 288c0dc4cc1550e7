"""Exit codes of the pod entrypoint: how a pod tells the operator what happened.

The operator reads the container's exit code (and the termination summary) and acts on it:
success, a permanent configuration error (fail the job at once), or a retryable failure
(restart the gang). Values follow sysexits.h where one fits, so they mean something to shell
users too. Keep in sync with docs/architecture.md ("Contract: pod -> operator").
"""

from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    SUCCESS = 0
    TRAINING_FAILED = 1  # retryable: restart the whole gang, counts against backoffLimit
    RENDEZVOUS_TIMEOUT = 69  # EX_UNAVAILABLE, retryable: the rank-0 endpoint never came up
    INVALID_CONFIG = 78  # EX_CONFIG, permanent: retrying cannot help
    PREEMPTED = 128 + signal.SIGTERM  # 143: SIGTERM (eviction, suspend, preemption) before training finished


class Outcome(str, enum.Enum):
    """The `outcome` field of the termination summary."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INVALID_CONFIG = "invalid_config"
    RENDEZVOUS_TIMEOUT = "rendezvous_timeout"
    PREEMPTED = "preempted"


EXIT_CODE_OF: dict[Outcome, ExitCode] = {
    Outcome.SUCCEEDED: ExitCode.SUCCESS,
    Outcome.FAILED: ExitCode.TRAINING_FAILED,
    Outcome.INVALID_CONFIG: ExitCode.INVALID_CONFIG,
    Outcome.RENDEZVOUS_TIMEOUT: ExitCode.RENDEZVOUS_TIMEOUT,
    Outcome.PREEMPTED: ExitCode.PREEMPTED,
}


def exit_code_for_signal_death(returncode: int) -> int:
    """A child killed by signal N (Popen returncode -N) is reported as 128+N, as a shell would.

    So a worker killed by the OOM killer (SIGKILL) still surfaces as 137, as the contract expects.
    """
    return 128 - returncode if returncode < 0 else returncode
