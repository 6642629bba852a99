"""Where a trial's time goes: ``torch.profiler`` over a few trials of the service's own loop.

    python benchmarks/profile_trial.py --shape llama-1b --proxy tracenas --space per_layer --out /tmp/profile

Writes, per run, the operator tables (self CPU and self device time), the Python functions that
hold the host longest (inclusive time, from the profiler's stack events), the device's busy share of
the profiled wall time, and a Chrome trace (``.json.gz``, open it in Perfetto). A trial that is
bound by the host shows a low busy share and a CPU table led by launches and Python.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import build, random_tokens  # noqa: E402
from search.candidates import prepare  # noqa: E402
from search.replay import AUTO, TIMED_CANDIDATES  # noqa: E402
from search.spec import JobSpec  # noqa: E402
from search.trials import named_proxy, open_study, search_trials  # noqa: E402
from studystore import make_storage  # noqa: E402


def busy_share(events: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(device busy seconds, profiled wall seconds, kernels): the union of kernel and copy intervals."""
    kernels = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    host = [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]
    wall = (max(e["ts"] + e["dur"] for e in host) - min(e["ts"] for e in host)) / 1e6 if host else 0.0
    busy, end = 0.0, float("-inf")
    for start, stop in kernels:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy / 1e6, wall, len(kernels)


def python_functions(events: list[dict[str, Any]], top: int) -> list[tuple[str, float, int]]:
    """The project's and transformers' Python functions by inclusive host time (name, seconds, calls)."""
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "python_function":
            continue
        name = e["name"]
        if any(part in name for part in ("search/", "transformers/", "optuna/", "studystore/", "torch/nn/")):
            totals[name] += e["dur"] / 1e6
            calls[name] += 1
    ranked = sorted(totals, key=totals.__getitem__, reverse=True)[:top]
    return [(name, totals[name], calls[name]) for name in ranked]


def run(shape: str, proxy: str, space: str, execution: str, trials: int, tokens: int, seq_len: int, out: Path) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded, _ = build(shape, device)
    token_set = random_tokens(loaded, tokens, seq_len)
    spec = JobSpec(
        model="benchmark",
        target={"param_ratio": 0.5},
        n_trials=trials + 64,
        proxy=proxy,
        token_schedule={"enabled": False},
        seed=0,
        verify_top_k=0,
        search_space={"parameterization": space},
        calibration={"n_samples": len(token_set.calibration), "seq_len": seq_len, "heldout_samples": 1},
    )
    context = prepare(loaded, spec, tokens=token_set)
    scorer = named_proxy(context, proxy, execution=execution)
    workdir = Path(tempfile.mkdtemp())
    study = open_study(context, study_name="profile", storage=make_storage(f"sqlite:///{workdir}/study.sqlite3"))
    search_trials(context, scorer, study, max_trials=TIMED_CANDIDATES + 1)  # kernels, allocator, storage tables
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, with_stack=True) as prof:
        search_trials(context, scorer, study, max_trials=trials)
    name = f"{shape.replace('/', '_')}-{proxy}-{space}-{execution}"
    trace = workdir / f"{name}.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    with trace.open("rb") as raw, gzip.open(out / f"{name}.json.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    shutil.rmtree(workdir)
    busy, wall, kernels = busy_share(events)
    averages = prof.key_averages()
    lines = [
        f"# {name}: {trials} trials",
        f"device busy {busy:.3f} s of {wall:.3f} s profiled ({busy / wall:.0%}), {kernels} kernels and copies"
        f" ({kernels / trials:.0f} a trial)",
        "",
        "## Python functions by inclusive host time (s, calls)",
        *(f"{seconds:9.4f} {count:6d}  {fn}" for fn, seconds, count in python_functions(events, 60)),
        "",
        "## Operators by self CPU time",
        averages.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60),
    ]
    if device.type == "cuda":
        lines += ["## Operators by self device time", averages.table(sort_by="self_cuda_time_total", row_limit=25)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-1b")
    parser.add_argument("--proxy", default="tracenas")
    parser.add_argument("--space", default="per_layer", help="comma-separated: per_layer,compact")
    parser.add_argument("--execution", default=AUTO, help="comma-separated: auto, gather, replay (search.replay)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for space in args.space.split(","):
        for proxy in args.proxy.split(","):
            for execution in args.execution.split(","):
                report = run(args.shape, proxy, space, execution, args.trials, args.tokens, args.seq_len, args.out)
                print(report, flush=True)
                name = f"{args.shape.replace('/', '_')}-{proxy}-{space}-{execution}"
                (args.out / f"{name}.txt").write_text(report + "\n")


if __name__ == "__main__":
    main()
