"""What ``prunesearch search`` prints at the end: the verified best beside the baselines.

The best is the verified one (lowest held-out figure among the proxy's finalists and the baselines),
which is not always the proxy's favourite shown on the progress bar; every label says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.results import best_entry

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from search.arch import ModelShape
    from search.candidates import SearchContext
    from search.recovery import RecoveryOutcome
    from search.results import (
        BestEntry,
        LatencyReport,
        RecoveryReport,
        SearchResult,
        SpeedReport,
        TrialInfo,
        Verification,
    )
    from search.spec import JobSpec

# The baselines enqueued as seeds (search.space), by origin.
BASELINE_NAMES: dict[str, str] = {
    "seed:uniform": "uniform width",
    "seed:block_influence": "Block Influence depth",
    "seed:owl": "OWL sparsity",
}


def print_result(
    console: Console,
    spec: JobSpec,
    context: SearchContext,
    result: SearchResult,
    recovery: RecoveryOutcome | None = None,
) -> BestEntry | None:
    """Print the verified best and, after a recovery, each finalist before and after it; returns the
    entry to export (the recovered winner when there is one)."""
    best = result.best
    if best is None:
        console.print("[red]No trial completed.[/]")
        return None
    _print_best(console, spec, context, result, best)
    if recovery is None:
        return best
    console.print(recovery_table(recovery.report))
    if recovery.winner is None:
        console.print("[yellow]Recovery stopped before a finalist finished; the best is exported as sliced.[/]")
        return best
    winner = next(t for t in result.trials if t.number == recovery.winner.trial_number)
    after = next(f.after for f in recovery.report.finalists if f.trial_number == winner.number)
    return best_entry(winner, verified=None).model_copy(update={"verified": after})


def recovery_table(report: RecoveryReport) -> Table:
    """Each recovered finalist's held-out figures before and after distillation, its steps and time."""
    from rich.table import Table

    lora = f", LoRA rank {report.lora_rank}" if report.lora_rank else ""
    table = Table(
        title=f"Recovery ({report.method}{lora}, {report.steps} steps, lr {report.learning_rate:g}, "
        f"{report.training_sequences:,} training sequences, {report.device}): lower {report.primary} is better"
    )
    metrics = [k for k in (report.finalists[0].before if report.finalists else {}) if k not in ("tokens", "primary")]
    columns = ["", "trial", *(f"{m} before" for m in metrics), *(f"{m} after" for m in metrics), "steps", "time"]
    for column in columns:
        table.add_column(column, justify="left" if not column else "right")
    for finalist in report.finalists:
        label = "[bold]winner[/]" if finalist.trial_number == report.winner else "finalist"
        after = finalist.after or {}
        table.add_row(
            label,
            str(finalist.trial_number),
            *(_number(finalist.before.get(m)) for m in metrics),
            *(_number(after.get(m)) for m in metrics),
            str(finalist.steps),
            f"{finalist.seconds:.1f}s",
        )
    return table


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""


def _print_best(console: Console, spec: JobSpec, context: SearchContext, result: SearchResult, best: BestEntry) -> None:
    verified = best.verified is not None
    which = "Verified best" if verified else "Proxy's best (not verified: verify_top_k is 0)"
    console.print(_arch_table(f"{which} architecture (trial {best.trial_number}, {best.origin})", best, context))
    dense = context.shape.dense_params()
    if spec.target.param_ratio is not None:
        target = spec.target.param_ratio * dense
        console.print(
            f"Parameters: {best.param_count:,} = {best.param_ratio:.4f} of {dense:,} "
            f"(target {spec.target.param_ratio} = {target:,.0f}; off by {best.param_count / target - 1:+.2%})"
        )
    else:
        console.print(f"Parameters: {best.param_count:,} = {best.param_ratio:.4f} of {dense:,}")
    if result.latency is not None:
        console.print(latency_table(result.latency))
    scores = ", ".join(f"{name}={value:.4f}" for name, value in best.scores.items())
    console.print(f"Proxy scores: {scores}")
    if verified and result.dense is not None:
        console.print(comparison_table(result, result.dense, int(best.trial_number), spec.proxy_label))
    if spec.multi_objective:
        console.print(_pareto_table(result, spec.proxy_label, latency=spec.latency_objective))


def comparison_table(result: SearchResult, dense: Verification, best_number: int, proxy_label: str) -> Table:
    """The verified best, each verified baseline and the dense model on the same held-out tokens."""
    from rich.table import Table

    by_number = {t.number: t for t in result.trials}
    table = Table(
        title=f"Verified on {dense.tokens:,} held-out tokens (lower {dense.primary} is better; "
        f"best of {len(result.verified)} verified candidates)"
    )
    for column in ("", "trial", "param ratio", f"proxy {proxy_label}", *dense.metrics):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("dense model", "", "1.0000", "", *(f"{value:.4f}" for value in dense.metrics.values()))
    best = by_number[best_number]
    best_label = "[bold]verified best[/]" + (f" = baseline {_baseline(best)}" if _is_baseline(best) else "")
    baselines = [
        (number, f"baseline: {_baseline(trial)}")
        for number, trial in sorted(by_number.items())
        if _is_baseline(trial) and number in result.verified and number != best_number
    ]
    for number, label in [(best_number, best_label), *baselines]:
        table.add_row(label, *_figures(by_number[number], result.verified[number].metrics, dense.metrics))
    return table


def _is_baseline(trial: TrialInfo) -> bool:
    return trial.origin.startswith("seed:")


def _baseline(trial: TrialInfo) -> str:
    return BASELINE_NAMES.get(trial.origin, trial.origin.removeprefix("seed:"))


def _figures(trial: TrialInfo, metrics: dict[str, float], dense: dict[str, float]) -> list[str]:
    ratio = f"{trial.param_ratio:.4f}" if trial.param_ratio is not None else ""
    score = f"{trial.value:.4f}" if trial.value is not None else ""
    return [str(trial.number), ratio, score, *(f"{metrics[name]:.4f}" for name in dense)]


def _arch_table(title: str, best: BestEntry, context: SearchContext) -> Table:
    from rich.table import Table

    from search.arch import ArchConfig

    shape: ModelShape = context.shape
    arch = ArchConfig.from_dict(best.arch)
    table = Table(title=title)
    columns = ["layer", "attention heads", "KV heads", "FFN channels"] + (["sparsity"] if arch.sparse else [])
    for column in columns:
        table.add_column(column, justify="right")
    for i, layer in enumerate(arch.layers):
        heads = f"{layer.heads}/{shape.num_heads}" if layer.heads else "[dim]dropped[/]"
        ffn = f"{layer.ffn_channels}/{shape.intermediate_size}" if layer.ffn_channels else "[dim]dropped[/]"
        row = [str(i), heads, f"{layer.heads // shape.group_size}/{shape.num_kv_heads}", ffn]
        table.add_row(*row, *([f"{layer.sparsity:.2f}"] if arch.sparse else []))
    return table


def _pareto_table(result: SearchResult, proxy_label: str, *, latency: bool = False) -> Table:
    from rich.table import Table

    front = Table(title=f"Pareto front ({len(result.pareto)} trials, by proxy score)")
    for column in ("trial", "param ratio", *(["predicted ms"] if latency else []), proxy_label):
        front.add_column(column, justify="right")
    by_number = {t.number: t for t in result.trials}
    order = (lambda n: by_number[n].latency_ms or 0.0) if latency else (lambda n: by_number[n].param_ratio or 0.0)
    for number in sorted(result.pareto, key=order):
        trial = by_number[number]
        predicted = [_number(trial.latency_ms)] if latency else []
        front.add_row(str(number), f"{trial.param_ratio:.4f}", *predicted, f"{trial.value:.4f}")
    return front


def latency_table(report: LatencyReport) -> Table:
    """Predicted against measured time per step (search.latency_check), dense and verified candidates."""
    from rich.table import Table

    table = Table(
        title=f"Latency per step: {report.phase}, batch {report.batch}, context {report.context} on {report.device} "
        f"({report.dtype}; table {report.table}); median |error| "
        + (f"{report.median_abs_error:.1%}" if report.median_abs_error is not None else "n/a")
        + (f" (table's calibration fit {report.table_fit_error:.1%})" if report.table_fit_error is not None else "")
    )
    for column in ("candidate", "predicted ms", "measured ms", "error"):
        table.add_column(column, justify="right")
    for check in [report.dense, *report.finalists]:
        name = "dense" if check.trial_number is None else f"trial {check.trial_number} ({check.origin})"
        table.add_row(name, f"{check.predicted_ms:.3f}", f"{check.measured_ms:.3f}", f"{check.error:+.1%}")
    return table


def speed_table(speed: SpeedReport) -> Table:
    """The exported model beside the dense one (search.speed): prefill, decode, memory, weights on disk."""
    from rich.table import Table

    used = speed.workload
    table = Table(
        title=f"Speed on {speed.device} in {speed.dtype} (medians of {used.repeats} runs after {used.warmup} "
        f"warm-up; decode: greedy with the KV cache after a {used.prompt_tokens}-token prompt)"
    )
    for column in ("", "dense", "exported", "speed-up"):
        table.add_column(column, justify="left" if not column else "right")
    for prefill in speed.prefill:
        label = f"prefill {prefill.batch} × {prefill.tokens} tokens"
        table.add_row(label, _ms(prefill.dense_s), _ms(prefill.pruned_s), f"{prefill.speedup:.2f}×")
    for decode in speed.decode:
        label = f"decode batch {decode.batch}, {decode.new_tokens} tokens (tokens/s)"
        dense, pruned = f"{decode.dense_tokens_per_s:,.0f}", f"{decode.pruned_tokens_per_s:,.0f}"
        table.add_row(label, dense, pruned, f"{decode.speedup:.2f}×")
    table.add_row("peak memory", _mb(speed.dense_peak_bytes), _mb(speed.pruned_peak_bytes), "")
    table.add_row("weights on disk", _mb(speed.dense_size_bytes), _mb(speed.pruned_size_bytes), "")
    table.caption = f"Peak memory: {speed.peak_memory}."
    return table


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _mb(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 1e6:.1f} MB"
