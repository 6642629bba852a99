"""Several worker processes serving one job: trials per minute against one worker.

Each worker is a separate process that loads the model, prepares the search (dense statistics,
the proxy's dense reference) and then runs trials of one shared Optuna study through
``search.coordination.search_chunk``, the function behind the service's ``evaluate_chunk`` task; the first
worker opens the study (seeds, provenance) as the job's coordinator does. The study lives in one
SQLite file in WAL mode (the embedded default; PostgreSQL behaves the same for this purpose).
Measured after every worker is ready, so model loading is reported separately, and so is each
worker's warm-up: a few trials on a study of its own, in which the proxy settles how it scores and
compiles and captures its graphs (``search.replay``), as a service worker does on its first chunk.

    python benchmarks/scaling.py --shape llama-8b --workers 1,2 --gpus 0         # two workers share one GPU
    python benchmarks/scaling.py --shape llama-8b --workers 1,2 --gpus 0,1       # one worker per GPU
    python benchmarks/scaling.py --shape tiny --workers 1,2 --trials 12          # CPU (tested in CI)

Reports, per worker count: trials per minute, scaling efficiency (throughput / (workers × one
worker's)), duplicate candidates (a trial whose architecture an earlier trial of the study already
had), each worker's trial count, the mean time a trial took to propose (sample, repair, select) and
to score, as the workers measured them (what contention between workers slows), and on GPUs the
utilisation of each GPU and each worker process (``nvidia-smi``). Writes a JSON file and a Markdown section (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks.sections import write_section  # noqa: E402

STUDY = "scaling"


def worker(args: argparse.Namespace) -> None:
    """One worker process: load, prepare, say ready, wait for the start signal, run trials."""
    import optuna
    import torch
    from throughput import build, random_tokens

    from search.candidates import prepare
    from search.coordination import search_chunk
    from search.replay import TIMED_CANDIDATES
    from search.spec import JobSpec
    from search.trials import job_proxy, open_study, search_trials
    from studystore import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Path(args.run_dir)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif not gpu:
        torch.set_num_threads(1)  # tiny CPU shapes gain nothing from intra-op threads; no oversubscription
    started = time.perf_counter()
    loaded, _ = build(args.shape if args.shape in _shapes() else str(ROOT / args.shape), device)
    load_s = time.perf_counter() - started
    tokens = random_tokens(loaded, args.tokens, args.seq_len)
    spec = JobSpec(
        model="benchmark",
        target={"param_ratio": 0.5},
        n_trials=args.trials,
        proxy=args.proxy,
        seed=0,
        verify_top_k=0,
        search_space={"parameterization": args.space},
        token_schedule={"enabled": args.token_schedule},
        calibration={"n_samples": len(tokens.calibration), "seq_len": args.seq_len, "heldout_samples": 1},
    )
    context = prepare(loaded, spec, tokens=tokens)
    started = time.perf_counter()
    # The proxy's dense reference, and a few trials on a study of the worker's own: the proxy settles
    # how it scores (search.replay), compiles and captures its graphs. A worker's start, reported apart
    # as loading is; search_chunk then reuses the proxy.
    warm_up = optuna.create_study(study_name="warm-up", sampler=optuna.samplers.RandomSampler(seed=args.rank))
    proxy = job_proxy(context)
    search_trials(context, proxy, warm_up, max_trials=TIMED_CANDIDATES + 2, batch=args.batch)
    warm_up_s = time.perf_counter() - started
    execution = getattr(getattr(proxy, "execution", None), "mode", "–")  # as throughput.py reads it
    storage = make_storage(args.storage)
    if args.rank == 0:
        open_study(context, study_name=STUDY, storage=storage)  # the coordinator's part
    ready = {"load_s": load_s, "warm_up_s": warm_up_s, "execution": execution, "pid": os.getpid()}
    (run / f"ready-{args.rank}").write_text(json.dumps(ready))
    while not (run / "go").exists():
        time.sleep(0.05)
    ran = search_chunk(
        context,
        study_name=STUDY,
        storage=storage,
        max_trials=args.trials,
        lookahead=args.lookahead,
        batch=args.batch,
    )
    (run / f"done-{args.rank}").write_text(json.dumps({"trials": ran}))


def _shapes() -> dict[str, Any]:
    from throughput import SHAPES

    return SHAPES


class GpuSampler:
    """Samples per-GPU and per-process SM utilisation with nvidia-smi while a run is going."""

    def __init__(self) -> None:
        self.per_gpu: dict[int, list[int]] = {}
        self.per_pid: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            gpus = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout
            for line in gpus.splitlines():
                index, value = (part.strip() for part in line.split(","))
                self.per_gpu.setdefault(int(index), []).append(int(value))
            pmon = subprocess.run(["nvidia-smi", "pmon", "-c", "1", "-s", "u"], capture_output=True, text=True).stdout
            for line in pmon.splitlines():
                fields = line.split()
                if line.startswith("#") or len(fields) < 4 or not fields[1].isdigit():
                    continue
                sm = fields[3]
                self.per_pid.setdefault(int(fields[1]), []).append(int(sm) if sm.isdigit() else 0)


def run_once(args: argparse.Namespace, world: int, workdir: Path) -> dict[str, Any]:
    run = workdir / f"workers-{world}"
    run.mkdir()
    storage = f"sqlite:///{run / 'study.sqlite3'}"
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else []
    processes = []
    for rank in range(world):
        env = os.environ.copy()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)]
        if args.threads:  # OpenMP and BLAS pools (numpy's too) are sized when the libraries load
            env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        command = [
            sys.executable, __file__, "--role", "worker", "--rank", str(rank), "--world", str(world),
            "--run-dir", str(run), "--storage", storage, "--shape", args.shape, "--proxy", args.proxy,
            "--space", args.space, "--trials", str(args.trials), "--tokens", str(args.tokens),
            "--seq-len", str(args.seq_len), "--token-schedule" if args.token_schedule else "--no-token-schedule",
            *(["--lookahead"] if args.lookahead else []), "--threads", str(args.threads), "--batch", str(args.batch),
        ]  # fmt: skip
        processes.append(subprocess.Popen(command, env=env))
        if rank == 0:  # the study must exist before the others look for it
            _wait(lambda: (run / "ready-0").exists(), processes)
    _wait(lambda: all((run / f"ready-{r}").exists() for r in range(world)), processes)
    ready = [json.loads((run / f"ready-{r}").read_text()) for r in range(world)]
    with GpuSampler() as sampler:
        go = time.time()
        (run / "go").write_text("")
        _wait(lambda: all((run / f"done-{r}").exists() for r in range(world)), processes)
        wall = time.time() - go
    for process in processes:
        process.wait()
    done = [json.loads((run / f"done-{r}").read_text()) for r in range(world)]

    import optuna

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    archs = Counter(json.dumps(t.user_attrs.get("arch"), sort_keys=True) for t in trials)
    timings = [t.user_attrs.get("timings", {}) for t in trials]
    utilisation = {}
    if sampler.per_gpu:
        utilisation["per_gpu"] = {str(k): _mean(v) for k, v in sampler.per_gpu.items()}
        utilisation["per_worker"] = [_mean(sampler.per_pid.get(r["pid"], [])) for r in ready]
    return {
        "workers": world,
        "gpus": [gpus[r % len(gpus)] for r in range(world)] if gpus else ["cpu"] * world,
        "trials": len(trials),
        "wall_s": wall,
        "trials_per_min": 60 * len(trials) / wall,
        "per_worker_trials": [d["trials"] for d in done],
        "duplicates": sum(n - 1 for n in archs.values()),
        # Per trial, as each worker measured it: proposing (sampling, repair, selection) and scoring.
        "propose_s": _mean([r.get("sample_s", 0.0) + r.get("realise_s", 0.0) for r in timings]),
        "score_s": _mean([r.get("score_s", 0.0) for r in timings]),
        # A multi-fidelity proxy scores a trial on as many tokens as the token schedule promotes it to.
        "scored_tokens": _mean([t.user_attrs.get("tokens", args.tokens) for t in trials]),
        "load_s": [r["load_s"] for r in ready],
        "warm_up_s": [r["warm_up_s"] for r in ready],
        "execution": [r["execution"] for r in ready],
        "utilisation": utilisation,
    }


def _wait(condition: Any, processes: list[subprocess.Popen[bytes]], timeout: float = 1800) -> None:
    deadline = time.time() + timeout
    while not condition():
        failed = [p.returncode for p in processes if p.poll() not in (None, 0)]
        if failed:
            raise SystemExit(f"a worker exited with {failed}")
        if time.time() > deadline:
            raise SystemExit("timed out waiting for the workers")
        time.sleep(0.05)


def _mean(values: list[int] | list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = results[0]["trials_per_min"] / results[0]["workers"]
    lines = [
        f"### {meta['shape']}, {meta['proxy']}, {meta['space']} space, {meta['tokens']:,} tokens per trial"
        + ("" if meta["token_schedule"] else ", no token schedule")
        + (", lookahead" if meta.get("lookahead") else "")
        + (f", {meta['batch']} trials scored together" if meta.get("batch", 1) > 1 else "")
        + (f", {meta['threads']} CPU threads per worker" if meta.get("threads") else ""),
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Hardware: {meta['hardware']}; torch {meta['torch']}; Python {meta['python']}.",
        "",
        "| workers | devices | trials | wall s | trials / min | scaling efficiency | trials per worker"
        " | duplicate candidates | propose s | score s | scored tokens | GPU utilisation % (per GPU)"
        " | SM % per worker | load s per worker | warm-up s per worker | execution per worker |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in results:
        efficiency = r["trials_per_min"] / (r["workers"] * base)
        util = r["utilisation"]
        per_gpu = ", ".join(f"{k}: {v:.0f}" for k, v in util.get("per_gpu", {}).items()) or "–"
        per_worker = ", ".join(f"{v:.0f}" for v in util.get("per_worker", [])) or "–"
        lines.append(
            f"| {r['workers']} | {', '.join(r['gpus'])} | {r['trials']} | {r['wall_s']:.1f} | "
            f"{r['trials_per_min']:.1f} | {efficiency:.2f} | {', '.join(map(str, r['per_worker_trials']))} | "
            f"{r['duplicates']} | {r['propose_s']:.3f} | {r['score_s']:.3f} | {r.get('scored_tokens', 0):,.0f} | "
            f"{per_gpu} | {per_worker} | {', '.join(f'{s:.1f}' for s in r['load_s'])} | "
            f"{', '.join(f'{s:.1f}' for s in r['warm_up_s'])} | {', '.join(r.get('execution', []))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", default="driver", choices=["driver", "worker"])
    parser.add_argument("--shape", default="tiny", help="a shape of benchmarks/throughput.py or a model directory")
    parser.add_argument("--proxy", default="tracenas")
    parser.add_argument("--space", default="per_layer")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, one after the other")
    parser.add_argument("--gpus", default="", help="CUDA devices, assigned to workers round-robin")
    parser.add_argument("--trials", type=int, default=40, help="the job's n_trials")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument(
        "--token-schedule",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the job's token schedule (search.fidelity), on by default as in a job",
    )
    parser.add_argument(
        "--lookahead", action="store_true", help="each worker proposes its next trial while scoring (search.loop)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="trials each worker scores together (search.loop; TraceNAS replays them at once)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="each worker's intra-op, OpenMP and BLAS threads (0: the libraries' default, every core; on a"
        " GPU host two workers' spinning pools may then crowd out each other's launching thread)",
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown section to write (JSON beside it)")
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--storage", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        worker(args)
        return

    import torch

    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for world in (int(w) for w in args.workers.split(",")):
            print(f"{args.shape}: {world} worker(s) ...", flush=True)
            results.append(run_once(args, world, Path(workdir)))
            print(f"  {results[-1]}", flush=True)
    gpu = torch.cuda.is_available()
    meta = {
        "shape": args.shape,
        "proxy": args.proxy,
        "space": args.space,
        "tokens": args.tokens,
        "token_schedule": args.token_schedule,
        "lookahead": args.lookahead,
        "batch": args.batch,
        "threads": args.threads,
        "command": "python benchmarks/scaling.py " + " ".join(a for a in sys.argv[1:]),
        "hardware": (
            f"{torch.cuda.device_count()}× {torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores"
            if gpu
            else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    text = render(results, meta)
    print(text)
    if args.out is not None:
        heading = (
            "## Scaling: several workers on one job\n\n"
            "Generated by `benchmarks/scaling.py` (its docstring says what is measured)."
        )
        key = f"{args.shape} {args.proxy} {args.space} gpus={args.gpus or 'cpu'}"
        key += "" if args.token_schedule else " no-schedule"
        key += " lookahead" if args.lookahead else ""
        key += f" batch={args.batch}" if args.batch > 1 else ""
        key += f" threads={args.threads}" if args.threads else ""
        write_section(args.out, f"scaling: {key}", text, heading=heading)
        figures = args.out.with_name(args.out.stem + "-scaling.json")
        previous = json.loads(figures.read_text()) if figures.exists() else {}
        previous[key] = {"results": results, "meta": meta}
        figures.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
