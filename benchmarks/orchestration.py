"""What a trial costs apart from its proxy: the study loop's storage writes and bookkeeping, against
bare Optuna on the same storage in the same run.

The project's own trial loop (``search.trials.search_trials``: the sampler, repair, selection, every
write a trial makes, and the worker's trial-result row and best-so-far: ``workers.jobs.TrialRecorder``)
with a proxy that costs nothing, on a Llama of random weights with as many layers as the per-layer
space needs for 32, 64 and 128 sampled parameters. Per trial:

- *sample*: the sampler's work inside ``suggest`` (for ``evo``, also its candidate claim);
- *realise*: repair to the budget and unit selection;
- *orchestration*: everything else (creating, writing and finishing the trial, reading the study,
  the result row): the wall time minus the two above.

The reference is bare Optuna: ``study.optimize`` with the same number of ``suggest_float`` calls and
a constant objective, on ``RDBStorage`` over the same database.

    python benchmarks/orchestration.py                       # SQLite and PostgreSQL, tpe and evo, 32/64/128
    python benchmarks/orchestration.py --params 32 --trials 5 --storages sqlite --json out.json   # smoke (CI)

Writes its section of docs/performance.md and docs/orchestration.json. PostgreSQL: a fresh database
made through ``--postgres`` (an admin URL; default the local server), dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sections import write_section  # noqa: E402
from search.calibration import TokenSet  # noqa: E402
from search.candidates import prepare  # noqa: E402
from search.loading import LoadedModel, adapter_for  # noqa: E402
from search.proxies import Proxy, ProxyScore  # noqa: E402
from search.selection import Selection  # noqa: E402
from search.spec import JobSpec  # noqa: E402
from search.trials import SearchHooks, open_study, search_trials  # noqa: E402
from service import repository  # noqa: E402
from service.db import make_sessionmaker, session_scope  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from studystore import make_storage  # noqa: E402
from workers.jobs import TrialRecorder  # noqa: E402
from workers.runtime import worker_engine  # noqa: E402

WARMUP = 12  # the enqueued baselines and the evo sampler's first draws are not the steady state


class FreeProxy(Proxy):
    """A proxy that costs nothing: what is left of a trial is orchestration."""

    name = "free"
    cost = 0

    def score(self, selection: Selection) -> ProxyScore:
        return ProxyScore(0.0)


@dataclass(frozen=True)
class Row:
    params: int
    storage: str
    sampler: str
    trials: int
    trial_ms: float
    sample_ms: float
    realise_ms: float
    orchestration_ms: float
    bare_optuna_ms: float

    @property
    def ratio(self) -> float:
        return self.orchestration_ms / self.bare_optuna_ms


def tiny_model(layers: int) -> LoadedModel:
    """A Llama of random weights with ``layers`` layers, small enough that only the loop costs."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=512,
        vocab_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    return LoadedModel(adapter_for(model), tokenizer, (f"orchestration-{layers}", None, "cpu"))


def project_loop(loaded: LoadedModel, url: str, sampler: str, trials: int) -> tuple[float, float, float]:
    """Mean ms per trial of the project's loop (wall, sample, realise), with the worker's result rows."""
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    tokens = TokenSet(ids[:2], ids[2:], digest="orchestration")
    spec = JobSpec(
        model="orchestration",
        target={"param_ratio": 0.5},
        n_trials=WARMUP + trials,
        sampler=sampler,
        seed=0,
        verify_top_k=0,
        token_schedule={"enabled": False},
        calibration={"n_samples": 2, "seq_len": 16, "heldout_samples": 2},
    )
    context = prepare(loaded, spec, tokens=tokens)
    sessions = make_sessionmaker(worker_engine(url))  # the worker's, as it records trials
    with session_scope(sessions) as session:
        job_id = repository.create_job(
            session, spec=spec.model_dump(mode="json"), model="m", trials_total=spec.n_trials
        ).id
    study = open_study(context, study_name=f"job-{job_id}", storage=make_storage(url))
    recorder = TrialRecorder(sessions, job_id)
    proxy = FreeProxy()
    hooks = SearchHooks(on_trial=[recorder])
    search_trials(context, proxy, study, max_trials=WARMUP, hooks=hooks)
    started = time.perf_counter()
    search_trials(context, proxy, study, max_trials=trials, hooks=hooks)
    wall = (time.perf_counter() - started) / trials
    measured = [t for t in study.get_trials(deepcopy=False) if t.number >= WARMUP]
    assert len(measured) == trials, f"{len(measured)} trials measured, {trials} expected"
    sample = statistics.mean(t.user_attrs["timings"]["sample_s"] for t in measured)
    realise = statistics.mean(t.user_attrs["timings"]["realise_s"] for t in measured)
    return wall * 1e3, sample * 1e3, realise * 1e3


def bare_optuna(url: str, params: int, trials: int) -> float:
    """Mean ms per trial of ``study.optimize`` on ``RDBStorage``: ``params`` floats, a constant objective."""

    def objective(trial: optuna.Trial) -> float:
        for index in range(params):
            trial.suggest_float(f"x.{index}", 0.0, 1.0)
        return 0.0

    study = optuna.create_study(
        storage=optuna.storages.RDBStorage(url), sampler=optuna.samplers.RandomSampler(seed=0), study_name="bare"
    )
    study.optimize(objective, n_trials=3)
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return (time.perf_counter() - started) / trials * 1e3


@contextmanager
def database(kind: str, workdir: Path, admin_url: str) -> Iterator[str]:
    """A fresh database with the service's tables: a SQLite file (the embedded default) or PostgreSQL."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir}/{secrets.token_hex(4)}.sqlite3"
        upgrade(url)
        yield url
        return
    name = f"prunesearch_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def render(rows: list[Row], meta: dict[str, str], command: str) -> str:
    lines = [
        f"Generated by `benchmarks/orchestration.py` on {meta['date']}, {meta['machine']}. Command: `{command}`",
        "",
        "Per trial, mean over the measured trials (after "
        f"{WARMUP} warm-up trials), a proxy that costs nothing. *orchestration* = the trial's wall time minus"
        " *sample* (the sampler's work; for `evo` also its candidate claim, a write and a read) and *realise*"
        " (repair and selection): creating, writing and finishing the trial, the study reads, and the worker's"
        " `trial_result` row. *bare Optuna* = `study.optimize` with as many `suggest_float` calls on"
        " `RDBStorage` over the same database, measured in the same run.",
        "",
        "| params | storage | sampler | trial ms | sample ms | realise ms | orchestration ms | bare Optuna ms |"
        " orchestration / bare |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.params} | {r.storage} | {r.sampler} | {r.trial_ms:.1f} | {r.sample_ms:.1f} | {r.realise_ms:.1f} |"
            f" {r.orchestration_ms:.1f} | {r.bare_optuna_ms:.1f} | {r.ratio:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="32,64,128", help="sampled parameters per trial (two per layer)")
    parser.add_argument("--storages", default="sqlite,postgresql")
    parser.add_argument("--samplers", default="tpe,evo")
    parser.add_argument("--trials", type=int, default=40, help="measured trials per configuration")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "orchestration.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for params in (int(p) for p in args.params.split(",")):
            loaded = tiny_model(params // 2)
            for storage in args.storages.split(","):
                for sampler in args.samplers.split(","):
                    with database(storage, Path(tmp), args.postgres) as url:
                        trial, sample, realise = project_loop(loaded, url, sampler, args.trials)
                        bare = bare_optuna(url, params, args.trials)
                    row = Row(
                        params, storage, sampler, args.trials, trial, sample, realise, trial - sample - realise, bare
                    )
                    print(json.dumps(asdict(row)), flush=True)
                    rows.append(row)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, Python"
        f" {platform.python_version()}, Optuna {optuna.__version__}",
    }
    command = "python benchmarks/orchestration.py " + " ".join(sys.argv[1:])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    write_section(
        args.out,
        "orchestration",
        render(rows, meta, command.strip()),
        heading="## Orchestration: what a trial costs besides its proxy",
    )
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
