"""Times work queued on a device without waiting for it: the host marks points in the stream as it
queues the work, and reads the times between them once the device is past the last mark."""

from __future__ import annotations

import time

import torch


class Stopwatch:
    """Marks on ``device``'s current stream: CUDA events on a GPU (recorded, never waited for while
    marking), clock readings on a CPU (where the work is done when the call that queued it returns)."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._cuda = device.type == "cuda"
        self._marks: list[torch.cuda.Event | float] = []
        self._laps: list[tuple[str, int, int]] = []

    def mark(self) -> int:
        """A point in the stream after everything queued so far (an index for ``lap``)."""
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self._device))
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())
        return len(self._marks) - 1

    def lap(self, name: str, since: int) -> int:
        """Counts the device's time from the mark ``since`` to now under ``name``; returns now's mark."""
        now = self.mark()
        self._laps.append((name, since, now))
        return now

    def totals(self) -> dict[str, float]:
        """Seconds per lap name, summed; waits until the device is past the last mark (a CUDA event
        is waited for without the GIL)."""
        if self._cuda and self._marks:
            self._marks[-1].synchronize()
        totals: dict[str, float] = {}
        for name, start, end in self._laps:
            totals[name] = totals.get(name, 0.0) + self._seconds(start, end)
        return totals

    def _seconds(self, start: int, end: int) -> float:
        began, ended = self._marks[start], self._marks[end]
        if isinstance(began, float) and isinstance(ended, float):
            return ended - began
        return began.elapsed_time(ended) / 1e3
