"""``serve`` and its embedded worker live and die together.

Stopping ``serve`` (SIGTERM from ``docker stop`` or systemd, SIGINT from Ctrl+C) stops the worker
too. Uvicorn handles both signals while it runs and, once shut down, raises the one it got again
with the handler installed before it; with Python's default SIGTERM action that killed ``serve``
on the spot, leaving the worker orphaned. ``stop_signals`` installs handlers that turn both
signals into ``StopRequested`` instead, so ``serve`` goes on to ``stop_worker``.

If ``serve`` dies without a chance to clean up (SIGKILL, a crash), the worker gets a cold
shutdown from the kernel (``stop_with_parent``, Linux): nobody is left to wait for its warm
shutdown, and the job it held resumes at the next start, as after any crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Celery's warm shutdown lets the task in hand finish; longer than this, the worker is killed
# (its job is resumed later, like any interrupted job).
WORKER_STOP_TIMEOUT_S = 30.0


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived: stop what was started, then leave."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT end the block quietly (also when uvicorn raises them again)."""
    previous = {signum: signal.signal(signum, _raise_stop) for signum in STOP_SIGNALS}
    try:
        yield
    except StopRequested:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_worker(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the worker in a session of its own: only ``serve`` signals it (the terminal's Ctrl+C goes
    to ``serve``, which passes the stop on), and a timed-out stop can kill its whole group."""
    return subprocess.Popen([*command, "--parent-pid", str(os.getpid())], env=env, start_new_session=True)


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = WORKER_STOP_TIMEOUT_S) -> None:
    """SIGTERM (warm shutdown), then SIGKILL to its group after ``timeout``. Another SIGTERM or SIGINT
    meanwhile asks for Celery's cold shutdown (SIGQUIT) at once."""

    def hurry(_signum: int, _frame: FrameType | None) -> None:
        if worker.poll() is None:
            worker.send_signal(signal.SIGQUIT)

    previous = {signum: signal.signal(signum, hurry) for signum in STOP_SIGNALS}
    try:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool child
            worker.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_with_parent(parent_pid: int) -> None:
    """Ask the kernel for a cold shutdown (SIGQUIT) of this process when ``parent_pid`` dies (Linux;
    elsewhere nothing happens: only a clean stop of ``serve`` stops its worker there)."""
    from celery.platforms import set_pdeathsig

    set_pdeathsig("SIGQUIT")
    if os.getppid() != parent_pid:  # it died before we asked
        raise SystemExit(f"the process that started this worker ({parent_pid}) has exited")
