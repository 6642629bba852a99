"""The interface every proxy implements: score a candidate; higher is better."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from search.selection import Selection


@dataclass(frozen=True)
class ProxyScore:
    value: float
    extras: dict[str, float] = field(default_factory=dict)  # other views of the same score, for reports
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage, for the breakdown


class Proxy(Protocol):
    name: str

    def score(self, selection: Selection) -> ProxyScore: ...
