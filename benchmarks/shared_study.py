"""What a second worker on the study costs a worker's loop, without a model: statements and CPU per trial.

The measured process runs ``search.loop.run_trials`` with the job's default sampler (``evo``) and
a stand-in objective that does what a trial of the per-layer space does to the study: ``--params``
sampled floats, the candidate's user attributes and constraint, the token schedule's read of its
peers and two rung reports, then ``--score-ms`` of sleep in place of the device. With ``--peers 1``
another process runs the same loop on the same study (SQLite in WAL mode, ``studystore.make_storage``)
for as long as the measured one runs. Reports, per trial of the measured process: its wall time
minus the sleep, its CPU time, and the SQL statements its storage sent (SQLAlchemy's
``before_cursor_execute``); ``--profile`` writes a cProfile of the measured loop.

    python benchmarks/shared_study.py --peers 0,1 --trials 150
"""

from __future__ import annotations

import argparse
import cProfile
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sqlalchemy import event  # noqa: E402

from search.arch import ModelShape  # noqa: E402
from search.evo import EvoSampler  # noqa: E402
from search.loop import run_trials  # noqa: E402
from studystore import make_storage  # noqa: E402

STUDY = "shared"
# Llama-3-8B's dimensions: the budget's share is computed from them (the sampler's parameters are stand-ins).
SHAPE = ModelShape(
    family="llama", model_type="llama", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
    head_dim=128, intermediate_size=14336, vocab_size=128256, qkv_bias=False, o_bias=False, mlp_bias=False,
    qk_norm=False, causal=True, gated_mlp=True, norm_bias=False, fixed=2 * 128256 * 4096 + 4096,
)  # fmt: skip


class _Objective:
    """A per-layer trial's writes and reads, with a sleep for the device."""

    def __init__(self, params: int, score_ms: float) -> None:
        self.params, self.score_s = params, score_ms / 1000

    def propose(self, trial: optuna.Trial) -> list[float]:
        values = [trial.suggest_float(f"p.{i}", 0.0, 1.0) for i in range(self.params)]
        trial.set_user_attr("arch", {"layers": [round(v, 3) for v in values]})
        trial.set_user_attr("param_count", int(sum(values) * 1e6))
        trial.set_user_attr("param_ratio", sum(values) / len(values))
        trial.set_constraint("budget", sum(values) / len(values) - 0.6)
        return values

    def score(self, trial: optuna.Trial, values: list[float]) -> float:
        peers = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        value = -sum((v - 0.5) ** 2 for v in values)
        trial.report(value * 1.1, step=256)
        trial.report(value, step=1024)
        time.sleep(self.score_s)
        trial.set_user_attr("scores", {"kl": value, "peers": len(peers)})
        trial.set_user_attr("timings", {"score_s": self.score_s})
        return value


def _key(params: dict[str, Any]) -> str:
    return json.dumps([round(float(params[n]), 2) for n in sorted(params)])


def worker(args: argparse.Namespace) -> None:
    """Run ``--trials`` trials on the study (or until ``--stop`` exists); the measured one writes its figures."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(args.storage)
    statements = [0]
    event.listen(storage.engine, "before_cursor_execute", lambda *_a: statements.__setitem__(0, statements[0] + 1))
    sampler = EvoSampler(args.seed, shape=SHAPE, param_ratio=0.6, candidate_key=_key)
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler)
    objective = _Objective(args.params, args.score_ms)
    stop = Path(args.stop) if args.stop else None
    if stop is not None:  # a peer: runs until the measured process is done
        while not stop.exists():
            run_trials(study, objective, max_trials=10, complete_target=10**9)
        return
    # Warm first: imports, caches, the study's first trials.
    run_trials(study, objective, max_trials=10, complete_target=10**9)
    profile = cProfile.Profile() if args.profile else None
    statements[0] = 0
    wall, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    run_trials(study, objective, max_trials=args.trials, complete_target=10**9)
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {
        "ms_per_trial": 1000 * (wall / args.trials - args.score_ms / 1000),
        "cpu_ms_per_trial": 1000 * cpu / args.trials,
        "statements_per_trial": statements[0] / args.trials,
    }
    Path(args.result).write_text(json.dumps(figures))


def run_once(args: argparse.Namespace, peers: int, workdir: Path) -> dict[str, float]:
    url = f"sqlite:///{workdir}/study-{peers}.sqlite3"
    optuna.create_study(study_name=STUDY, storage=make_storage(url), direction="maximize")
    base = [sys.executable, __file__, "--storage", url, "--params", str(args.params), "--score-ms", str(args.score_ms)]
    stop = workdir / f"stop-{peers}"
    started = [
        subprocess.Popen([*base, "--role", "worker", "--seed", str(1 + p), "--stop", str(stop)]) for p in range(peers)
    ]
    result = workdir / f"result-{peers}.json"
    profile = [] if not args.profile else ["--profile", f"{args.profile}-{peers}.prof"]
    measured = [*base, "--role", "worker", "--seed", "0", "--trials", str(args.trials), "--result", str(result)]
    try:
        subprocess.run([*measured, *profile], check=True)
    finally:
        stop.touch()
        for process in started:
            process.wait()
    return {"peers": peers, **json.loads(result.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="driver", choices=["driver", "worker"])
    parser.add_argument("--peers", default="0,1", help="other processes on the study, one run each")
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--params", type=int, default=96)
    parser.add_argument("--score-ms", type=float, default=30.0, help="sleep in place of the device, per trial")
    parser.add_argument("--profile", default="", help="cProfile output prefix (one file per peer count)")
    parser.add_argument("--storage", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        worker(args)
        return
    with tempfile.TemporaryDirectory() as workdir:
        for peers in (int(p) for p in args.peers.split(",")):
            figures = run_once(args, peers, Path(workdir))
            print(json.dumps({k: round(v, 2) for k, v in figures.items()}), flush=True)


if __name__ == "__main__":
    main()
