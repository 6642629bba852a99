"""What one trial costs, broken down, against the floor measured in the same run.

For each model shape: the time per trial of every proxy, split into realising the candidate
(repair + selection), forward, backward, correlation, and the study's bookkeeping and database
writes; and the floor: one forward+backward of the *physically pruned* model over the same
tokens. The ratio trial / floor is what the search pays for evaluating candidates in place.

    python benchmarks/throughput.py                      # GPU: reference models, ~1B and ~8B Llama shapes
    python benchmarks/throughput.py --shapes tiny --tokens 512 --trials 4   # CPU smoke run (tested in CI)

Writes docs/performance.md (and a JSON of the raw figures beside it). Random weights: speed only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
FLOOR_REPEATS = 10  # the floor's median is what every ratio divides by: 3 repeats moved it by 20% between runs
sys.path.insert(0, str(ROOT))

from benchmarks.sections import write_section  # noqa: E402
from search.calibration import TokenSet  # noqa: E402
from search.candidates import prepare  # noqa: E402
from search.export import materialize  # noqa: E402
from search.loading import (  # noqa: E402
    LoadedModel,
    adapter_for,
    load_model,
)
from search.names import PROXIES  # noqa: E402
from search.repair import Proposal  # noqa: E402
from search.replay import AUTO, GATHER, TIMED_CANDIDATES  # noqa: E402
from search.spec import JobSpec  # noqa: E402
from search.trials import job_proxy, named_proxy, open_study, search_trials  # noqa: E402
from studystore import make_storage  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        vocab_size=2048,
    ),
    "llama-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
    ),
    "llama-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    ),
}


@dataclass
class Row:
    model: str
    space: str
    params: int
    proxy: str
    tokens: int
    trials: int
    trial_s: float
    realise_s: float
    apply_s: float
    forward_s: float
    backward_s: float
    correlation_s: float
    scored_tokens: float  # mean calibration tokens a trial was scored on (fewer with a token schedule)
    reference_mib: float  # the proxy's dense reference kept on the device (KL's log-probabilities)
    orchestration_s: float
    floor_s: float
    prepare_s: float
    execution: str = ""  # how the proxy scored the measured trials (search.replay): gather or replay
    batch: int = 1  # trials scored together (search.loop; TraceNAS replays a round in one pass)

    @property
    def ratio(self) -> float:
        return self.trial_s / self.floor_s


def build(name: str, device: torch.device) -> tuple[LoadedModel, float]:
    """A random-weight Llama of a named shape, or a reference model directory, on ``device``."""
    started = time.perf_counter()
    if name in SHAPES:
        from tokenizers import Tokenizer, models
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        config = LlamaConfig(**SHAPES[name], max_position_embeddings=4096, tie_word_embeddings=False)
        config._attn_implementation = "sdpa"
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype).eval()
        model.config.use_cache = False
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
        )
        loaded = LoadedModel(adapter_for(model), tokenizer, (name, None, str(device)))
    else:
        loaded = load_model(name, device=str(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return loaded, time.perf_counter() - started


def disk_load(name: str, device: torch.device, workdir: Path) -> dict[str, float]:
    """Save a random-weight shape with ``save_pretrained`` and load it back the way workers do
    (``search.loading.load_model``: the fit check, ``from_pretrained``, then onto the device)."""
    loaded, _ = build(name, device)
    directory = workdir / f"{name}-saved"
    started = time.perf_counter()
    loaded.adapter.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    save_s = time.perf_counter() - started
    size = sum(f.stat().st_size for f in directory.iterdir())
    del loaded
    _release()
    cold = _drop_page_cache()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    reloaded = load_model(str(directory), device=str(device))
    load_s = _now() - started
    figures = {"save_s": save_s, "load_s": load_s, "gib_on_disk": size / 2**30, "cold": float(cold)}
    if device.type == "cuda":
        figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del reloaded
    _release()
    shutil.rmtree(directory)
    return figures


def _drop_page_cache() -> bool:
    """Whether the OS page cache could be emptied (root only), so the load reads the disk, not memory."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def random_tokens(loaded: LoadedModel, tokens: int, seq_len: int) -> TokenSet:
    rows = max(1, tokens // seq_len)
    generator = torch.Generator().manual_seed(0)
    vocab = loaded.adapter.shape.vocab_size
    ids = torch.randint(0, vocab, (rows * 2, seq_len), generator=generator)
    return TokenSet(ids[:rows], ids[rows:], digest=f"random-{rows}x{seq_len}")


def floor(loaded: LoadedModel, context: Any, proposal: Proposal, repeats: int) -> float:
    """One forward+backward of the physically pruned model (weight gradients on, as in training)."""
    selection = context.candidate(proposal, context.ratio_range()[1])
    model, _, _ = materialize(loaded.adapter, selection, device=loaded.adapter.device)
    model.config.use_cache = False
    times = []
    for index in range(repeats + 1):
        started = _now()
        for batch in context.tokens.batches("calibration", 8, loaded.adapter.device):
            model(**batch, labels=batch["input_ids"]).loss.backward()
        elapsed = _now() - started
        model.zero_grad(set_to_none=True)
        if index:  # the first run warms up kernels and the allocator
            times.append(elapsed)
    del model
    _release()
    return statistics.median(times)


def measure(
    name: str,
    proxy: str,
    loaded: LoadedModel,
    tokens: TokenSet,
    trials: int,
    workdir: Path,
    parameterization: str,
    *,
    lookahead: bool = False,
    execution: str = AUTO,
    batch: int = 1,
) -> Row:
    """``proxy``: a proxy name, scored on every token; ``NAME+schedule`` for a multi-fidelity proxy
    with the job's default token schedule."""
    proxy_name, _, variant = proxy.partition("+")
    spec = JobSpec(
        model="benchmark",
        target={"param_ratio": 0.5},
        n_trials=trials + 64,  # never reached: the calls below stop after their own counts
        proxy=proxy_name,
        token_schedule={"enabled": variant == "schedule"},
        seed=0,
        verify_top_k=0,
        search_space={"parameterization": parameterization},
        calibration={
            "n_samples": len(tokens.calibration),
            "seq_len": tokens.calibration.shape[1],
            "heldout_samples": len(tokens.heldout),
        },
    )
    started = _now()
    context = prepare(loaded, spec, tokens=tokens)
    # The proxy's dense reference is part of the preparation timed here.
    scorer = job_proxy(context) if execution == AUTO else named_proxy(context, proxy_name, execution=execution)
    prepare_s = _now() - started

    # The service's own trial loop (search.trials.search_trials): sampler, repair, selection, proxy and
    # every write a trial makes, on the embedded SQLite storage.
    storage = make_storage(
        f"sqlite:///{workdir}/{name.replace('/', '_')}-{proxy_name}-{variant}-{parameterization}"
        f"-{execution}-{batch}.sqlite3"
    )
    study = open_study(context, study_name="throughput", storage=storage)
    # Warm-up: kernels, allocator, storage tables; with a token schedule, also the trials it scores in
    # full before comparing (full_trials), so the measured ones are the schedule's steady state.
    warmup = spec.token_schedule.full_trials if variant == "schedule" else 1
    # ``auto`` scores its first candidates both ways to choose (search.replay): part of the warm-up.
    warmup = max(warmup, TIMED_CANDIDATES + 1)
    search_trials(context, scorer, study, max_trials=warmup, lookahead=lookahead)
    if batch > 1:  # a round scored together once, so its graph is captured before the measured rounds
        search_trials(context, scorer, study, max_trials=batch, lookahead=lookahead, batch=batch)
        warmup += batch
    began = _now()
    search_trials(context, scorer, study, max_trials=trials, lookahead=lookahead, batch=batch)
    wall = _now() - began
    measured = [t for t in study.get_trials(deepcopy=False) if t.number >= warmup and t.state == TrialState.COMPLETE]
    wall /= len(measured)
    records = [t.user_attrs["timings"] for t in measured]
    mean = {key: statistics.mean(r.get(key, 0.0) for r in records) for key in records[0]}
    # What the trial costs beyond its scoring is what the GPU waits for.
    proxy_time = mean["score_s"]
    uniform = Proposal.uniform(context.shape.num_layers)
    return Row(
        model=name,
        space=parameterization,
        params=context.shape.dense_params(),
        proxy=proxy,
        tokens=tokens.calibration.numel(),
        trials=trials,
        trial_s=wall,
        realise_s=mean["realise_s"],
        apply_s=mean.get("apply_s", 0.0),
        forward_s=mean.get("forward_s", 0.0),
        backward_s=mean.get("backward_s", 0.0),
        correlation_s=mean.get("correlation_s", 0.0),
        scored_tokens=statistics.mean(t.user_attrs.get("tokens", tokens.calibration.numel()) for t in measured),
        reference_mib=getattr(scorer, "reference_bytes", 0) / 2**20,
        orchestration_s=max(0.0, wall - proxy_time),
        floor_s=floor(loaded, context, uniform, repeats=FLOOR_REPEATS),
        prepare_s=prepare_s,
        execution=getattr(getattr(scorer, "execution", None), "mode", GATHER),
        batch=batch,
    )


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _release() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


SECTIONS = "## More trial costs\n\nGenerated by `benchmarks/throughput.py --section` (columns as in the table above)."


def kl_reading(rows: list[Row]) -> list[str]:
    """KL's trial against TraceNAS's on the same shape, space and tokens, with and without the token
    schedule (the issue's goal: at most 0.6× at 4,096 tokens on the 8B shape)."""
    lines = []
    for trace in (r for r in rows if r.proxy == "tracenas"):
        same = {r.proxy: r for r in rows if (r.model, r.space, r.tokens) == (trace.model, trace.space, trace.tokens)}
        full, scheduled = same.get("kl"), same.get("kl+schedule")
        if full is None:
            continue
        line = (
            f"- {trace.model}, {trace.space}: a KL trial costs {full.trial_s / trace.trial_s:.2f}× a TraceNAS trial"
            f" on the same {trace.tokens:,} tokens ({full.trial_s:.3f} s against {trace.trial_s:.3f} s; the scoring"
            f" alone, forward against forward+backward+correlation: {full.forward_s:.3f} s against"
            f" {trace.forward_s + trace.backward_s + trace.correlation_s:.3f} s)"
        )
        if scheduled is not None:
            line += (
                f"; with the token schedule the mean trial scores {scheduled.scored_tokens:,.0f} tokens and costs"
                f" {scheduled.trial_s / trace.trial_s:.2f}× ({scheduled.trial_s:.3f} s)"
            )
        lines.append(line + f". KL's dense reference on the GPU: {full.reference_mib:.1f} MiB.")
    return lines


def render(rows: list[Row], meta: dict[str, Any], command: str) -> str:
    lines = [
        "# Performance: what a trial costs",
        "",
        "Generated by `benchmarks/throughput.py`; do not edit by hand.",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {meta['device_name']}; torch {meta['torch']}; {meta['dtype']}; Python {meta['python']}.",
        "",
        f"Per trial, mean over the measured trials ({TIMED_CANDIDATES + 1} warm-up trials excluded, and a"
        " warm-up round where trials are batched). *floor* = one"
        " forward+backward",
        "of the physically pruned model (uniform width at 50% of the parameters) over the same tokens, weight",
        f"gradients on, measured in the same run (median of {FLOOR_REPEATS} after a warm-up).",
        "*orchestration* = wall time per trial minus the time the loop spends scoring (starting the scoring",
        "and waiting for it): sampling, realising, the study's reads and writes. A TraceNAS round on a GPU",
        "is launched (`search.loop`): the loop proposes the next round and tells this one while the GPU",
        "scores, so there *orchestration* overlaps the device's time (*forward*, and when gathering *apply*,",
        "*backward* and *correlation*), and the trial costs about the larger of the two"
        + (
            " (with lookahead, `--lookahead`, an eager proxy's next candidate is proposed by a second thread"
            " while the GPU scores this one);"
            if meta["lookahead"]
            else ";"
        ),
        "*realise* = repair to the budget and selection of heads and channels; *apply* =",
        "swapping in the candidate (dropped sub-blocks, gathers of the kept heads / channels, sparse zeroing).",
        "*execution*: how the proxy scored (`search.replay`): `gather` = in place on gathers of the kept units,"
        " `replay` = one replayed CUDA graph of the full-width model with the candidate as masks (forward,"
        " backward and correlation all under *forward*); `auto` chooses by timing both on its first candidates."
        " *batch*: trials asked, proposed and scored together (`search.loop`); replaying TraceNAS scores a round"
        " in one graph, a slot and a copy of the tokens per candidate, and each trial counts its share.",
        "*space*: `per_layer` samples 2 parameters per layer, `compact` 5. Trials run through the service's own",
        "loop (`search.trials.search_trials`, the job's default `evo` sampler) on the embedded SQLite storage.",
        "",
        "| model | params | proxy | space | execution | batch | tokens | scored tokens | trial s | realise | apply"
        " | forward | backward | correlation | orchestration | floor s | trial / floor | prepare s |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.params / 1e6:,.1f}M | {r.proxy} | {r.space} | {r.execution} | {r.batch} | {r.tokens:,} |"
            f" {r.scored_tokens:,.0f} | "
            f"{r.trial_s:.3f} | "
            f"{r.realise_s:.3f} | {r.apply_s:.3f} | "
            f"{r.forward_s:.3f} | {r.backward_s:.3f} | {r.correlation_s:.3f} | {r.orchestration_s:.3f} | "
            f"{r.floor_s:.3f} | {r.ratio:.2f}x | {r.prepare_s:.1f} |"
        )
    if meta.get("load"):
        lines += [
            "",
            "## Model build / load and peak memory",
            "",
            "| model | load s | peak GPU memory GiB |",
            "|---|---:|---:|",
        ]
        for name, figures in meta["load"].items():
            lines.append(f"| {name} | {figures['load_s']:.1f} | {figures.get('peak_gib', 0.0):.1f} |")
    if meta.get("disk"):
        lines += [
            "",
            "## Loading from disk (`save_pretrained` output, loaded by `search.loading.load_model`)",
            "",
            "| model | GiB on disk | save s | load s | read from | peak GPU memory GiB |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for name, figures in meta["disk"].items():
            source = "disk (page cache dropped)" if figures.get("cold") else "page cache (could not drop it)"
            lines.append(
                f"| {name} | {figures['gib_on_disk']:.1f} | {figures['save_s']:.1f} | {figures['load_s']:.1f} | "
                f"{source} | {figures.get('peak_gib', 0.0):.1f} |"
            )
    lines += ["", "## Reading", "", *meta.get("reading", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    default_shapes = "models/ref-llama-7m,models/ref-llama-13m,llama-1b,llama-8b" if gpu else "tiny"
    parser.add_argument("--shapes", default=default_shapes, help="comma-separated shape names or model dirs")
    parser.add_argument("--proxies", default=",".join(p for p in PROXIES if p in ("tracenas", "prunenet")))
    parser.add_argument("--spaces", default="per_layer,compact", help="search-space parameterisations")
    parser.add_argument("--tokens", type=int, default=4096 if gpu else 1024)
    parser.add_argument("--seq-len", type=int, default=1024 if gpu else 128)
    parser.add_argument("--trials", type=int, default=8 if gpu else 3)
    parser.add_argument(
        "--skip", default="", help="comma-separated proxy:shape pairs not to measure (e.g. prunenet:llama-8b)"
    )
    parser.add_argument(
        "--lookahead", action="store_true", help="propose the next candidate in a second thread (search.loop)"
    )
    parser.add_argument(
        "--executions",
        default=AUTO,
        help="comma-separated ways to score (search.replay): auto, gather, replay; several measure side by side",
    )
    parser.add_argument(
        "--batches", default="1", help="comma-separated trials scored together (search.loop); several side by side"
    )
    parser.add_argument("--disk-load", default="", help="comma-separated shape names to save and load from disk")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument(
        "--section", default="", help="write a marked section of --out with this title, keeping the rest"
    )
    args = parser.parse_args()

    device = torch.device("cuda" if gpu else "cpu")
    batches = [int(b) for b in args.batches.split(",") if b]
    rows: list[Row] = []
    load: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in [s for s in args.shapes.split(",") if s]:
            if name not in SHAPES and not (ROOT / name).is_dir():
                print(f"skipping {name}: not a shape name or a model directory", flush=True)
                continue
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            loaded, load_s = build(name if name in SHAPES else str(ROOT / name), device)
            tokens = random_tokens(loaded, args.tokens, args.seq_len)
            for proxy in args.proxies.split(","):
                if f"{proxy}:{name}" in args.skip.split(","):
                    continue
                for space in args.spaces.split(","):
                    for execution, batch in itertools.product(args.executions.split(","), batches):
                        print(f"{name} / {proxy} / {space} / {execution} / batch {batch} ...", flush=True)
                        rows.append(
                            measure(
                                name,
                                proxy,
                                loaded,
                                tokens,
                                args.trials,
                                Path(workdir),
                                space,
                                lookahead=args.lookahead,
                                execution=execution,
                                batch=batch,
                            )
                        )
                        print(f"  {rows[-1]}", flush=True)
            load[name] = {"load_s": load_s}
            if gpu:
                load[name]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            del loaded
            _release()
        disk = {}
        for name in [s for s in args.disk_load.split(",") if s]:
            print(f"{name}: save and load from disk ...", flush=True)
            disk[name] = disk_load(name, device, Path(workdir))
            print(f"  {disk[name]}", flush=True)

    meta = {
        "device_name": torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "dtype": "bf16" if gpu else "float32",
        "python": platform.python_version(),
        "lookahead": args.lookahead,
        "load": load,
        "disk": disk,
        "reading": [
            "- Gathered, TraceNAS runs each candidate on gathers of its kept heads and channels (decoders) and"
            " skips dropped sub-blocks, so its forward+backward does the pruned model's work plus the sketch"
            " (one (out × r) product per linear inside the backward); *apply* is the gather. Replayed, it runs"
            " the full-width model with the candidate as masks, its layers compiled (`search.replay`).",
            "- Orchestration: a trial's parameters and attributes are written in one transaction when it"
            " ends (`studystore.BatchedRDBStorage`) and the study's reads fetch only trials that changed;"
            " what is left is sampling, realising, creating and finishing the trial and the study's reads"
            " (benchmarks/orchestration.py measures the storage's part without a model).",
            *kl_reading(rows),
        ],
    }
    command = ("python benchmarks/throughput.py " + " ".join(sys.argv[1:])).strip()
    figures = {"rows": [r.__dict__ | {"ratio": r.ratio} for r in rows], "meta": meta}
    if args.section:  # one marked section of the page; the rest of it stays as it is
        text = render(rows, meta, command).split("\n", 2)[2].replace("## ", "#### ")
        write_section(args.out, f"throughput: {args.section}", f"### {args.section}\n{text}", heading=SECTIONS)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", args.section).strip("-").lower()
        args.out.with_name(f"{args.out.stem}-{slug}.json").write_text(json.dumps(figures, indent=2))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(rows, meta, command))
        args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
