"""Job and trial states, shared by the API, the repository and the worker glue."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """``queued → running → succeeded | failed | cancelled``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class TrialState(StrEnum):
    """The state of one trial, mirroring Optuna's ``TrialState`` names that matter to users."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    PRUNED = "pruned"


# Trials that count towards progress as done without error. A pruned trial finished early on
# purpose (multi-fidelity), so it is progress, not a failure.
COMPLETED_TRIAL_STATES: frozenset[TrialState] = frozenset({TrialState.COMPLETE, TrialState.PRUNED})
