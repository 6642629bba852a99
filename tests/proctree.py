"""The processes below a process, read from ``/proc`` (Linux): which ones a test started, and
whether any survived. A process is identified by pid *and* start time, so a reused pid is not
mistaken for a survivor."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    parent: int
    started: int  # clock ticks after boot: with the pid, names one process for good
    state: str

    @property
    def command(self) -> str:
        try:
            raw = (PROC / str(self.pid) / "cmdline").read_bytes()
        except OSError:
            return "?"
        return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def supported() -> bool:
    return (PROC / "self" / "stat").is_file()


def read(pid: int) -> ProcessInfo | None:
    """The process ``pid`` now, or ``None`` if there is none."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessInfo(pid=pid, parent=int(fields[1]), started=int(fields[19]), state=fields[0])


def descendants(root: int) -> list[ProcessInfo]:
    """Every living (non-zombie) process below ``root``."""
    processes = [info for entry in PROC.iterdir() if entry.name.isdigit() and (info := read(int(entry.name)))]
    children: dict[int, list[ProcessInfo]] = {}
    for info in processes:
        children.setdefault(info.parent, []).append(info)
    found: list[ProcessInfo] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child.pid)
    return [info for info in found if info.state != "Z"]


def alive(process: ProcessInfo) -> bool:
    now = read(process.pid)
    return now is not None and now.started == process.started and now.state != "Z"


def survivors(processes: list[ProcessInfo], *, within: float) -> list[ProcessInfo]:
    """Those of ``processes`` still alive after waiting up to ``within`` seconds for them to exit."""
    deadline = time.monotonic() + within
    while True:
        left = [process for process in processes if alive(process)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def kill(processes: list[ProcessInfo]) -> None:
    for process in processes:
        if alive(process):
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(process.pid, signal.SIGKILL)


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (Linux), so a process whose parent died is still
    found below this one instead of under init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
