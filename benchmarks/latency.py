"""Latency-aware search on the worker's own device: predicted against measured latency, and what a
latency target buys over a parameter target of the same size.

For each shape (random weights, so speed only; shapes and random tokens from benchmarks/throughput.py):
1. the alignment measurement behind ``search.latency.device_alignment``: one MLP (gate, up, down) in
   the model's precision at widths around a multiple of 128, for the decode and prefill token counts;
2. the latency tables of every setting below (the search's own built as its job prepares), each with
   its build time and calibration fit error;
3. the tables' accuracy: ``--random-candidates`` random per-layer architectures (widths on the
   alignment grid, some sub-blocks and layers dropped), each built as its export would be (random
   weights) and timed in every setting beside its prediction, before any search (see
   ``measure_shape``);
4. a latency-targeted search (``latency_ratio`` in the decode setting below, KL proxy, few trials),
   then a parameter-targeted search at the parameter count the latency-targeted best reached;
5. dense, the latency-targeted best and the parameter-targeted best, each materialised as exported
   and timed once the searches' state is freed: decode tokens/s at batch 1 and 16 (context 512),
   prefill time at batch 8 × 512, each beside the latency table's prediction. The section gives the
   median |prediction error| per setting over the random architectures and the bests (goal: within
   10%).

    python benchmarks/latency.py                                   # GPU: llama-1b and llama-8b, ~4 min on an H200
    python benchmarks/latency.py --shapes tiny --context 32 --decode-batches 1,2 --prefill-batch 2 \\
        --trials 3 --tokens 256 --seq-len 32 --out /tmp/perf.md     # CPU smoke run (tested in CI)

Writes a marked section of docs/performance.md and the raw figures beside it (performance-latency.json),
again after each shape, so a run cut short keeps the shapes it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sections import write_section  # noqa: E402
from benchmarks.throughput import SHAPES, build, random_tokens  # noqa: E402
from search import latency_calibration as calibration  # noqa: E402
from search.arch import ArchConfig, LayerArch, ModelShape  # noqa: E402
from search.candidates import SearchContext, prepare  # noqa: E402
from search.export import materialize  # noqa: E402
from search.latency import LATENCY_TABLE, LatencyTable, build_table, device_name  # noqa: E402
from search.latency_check import (  # noqa: E402
    MEASURE_PASSES,
    MEASURE_REPEATS,
    MEASURE_SECONDS,
    MEASURE_WARMUP,
    measured_ms,
)
from search.latency_timing import least_of_passes  # noqa: E402
from search.loading import LoadedModel  # noqa: E402
from search.spec import JobSpec, LatencySetting  # noqa: E402
from search.study import run_search  # noqa: E402

SECTION = "latency"
HEADING = "## Latency-aware search"


def settings(args: argparse.Namespace) -> dict[str, LatencySetting]:
    """The settings the table reports: decode at each batch, prefill at one batch, one context."""
    rows = {
        f"decode b{batch}": LatencySetting(phase="decode", batch=batch, context=args.context)
        for batch in args.decode_batches
    }
    rows[f"prefill b{args.prefill_batch}"] = LatencySetting(
        phase="prefill", batch=args.prefill_batch, context=args.context
    )
    return rows


# --- 1. alignment --------------------------------------------------------------------------------------


def alignment_widths(intermediate: int) -> list[int]:
    """Widths around a multiple of 128 near half the model's FFN: aligned, and off by 8 to 96."""
    centre = max(128, (intermediate // 2) // 128 * 128)
    offsets = (-64, -32, -8, 0, 8, 32, 64, 96, 128)
    return sorted({centre + o for o in offsets if 0 < centre + o <= intermediate})


@torch.no_grad()
def mlp_ms(hidden: int, width: int, tokens: int, device: torch.device, dtype: torch.dtype) -> float:
    """Median milliseconds of one gated MLP (gate, up, down; SiLU) over ``tokens`` tokens."""
    with torch.device(device):
        gate, up, down = (nn.Linear(hidden, width, bias=False), nn.Linear(hidden, width, bias=False),
                          nn.Linear(width, hidden, bias=False))  # fmt: skip
    gate, up, down = (m.to(dtype) for m in (gate, up, down))
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)

    def run() -> None:
        down(nn.functional.silu(gate(x)) * up(x))

    for _ in range(MEASURE_WARMUP):
        run()
    times = []
    for _ in range(MEASURE_REPEATS * 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def alignment(loaded: LoadedModel, args: argparse.Namespace) -> dict[str, Any]:
    shape, device = loaded.adapter.shape, loaded.adapter.device
    dtype = next(loaded.adapter.model.parameters()).dtype
    counts = {
        f"decode b{max(args.decode_batches)}": max(args.decode_batches),
        "prefill": args.prefill_batch * args.context,
    }
    widths = alignment_widths(shape.intermediate_size)
    return {
        name: {width: mlp_ms(shape.hidden_size, width, tokens, device, dtype) for width in widths}
        for name, tokens in counts.items()
    }


# --- 2. searches -------------------------------------------------------------------------------------


def job(args: argparse.Namespace, tokens: Any, target: dict[str, Any]) -> JobSpec:
    return JobSpec(
        model="benchmark",
        target=target,
        n_trials=args.trials,
        proxy="kl",
        seed=0,
        verify_top_k=2,
        audit_size=0,
        neighbourhood_size=0,
        calibration={
            "n_samples": len(tokens.calibration),
            "seq_len": tokens.calibration.shape[1],
            "heldout_samples": len(tokens.heldout),
        },
    )


def search(context: SearchContext, name: str) -> dict[str, Any]:
    """Run the prepared job; its best, and the job's own latency check where it has a latency target."""
    started = time.perf_counter()
    result = run_search(context, study_name=name)
    assert result.best is not None and result.best.arch is not None
    best = {
        "trial": result.best.trial_number,
        "arch": result.best.arch,
        "param_ratio": result.best.param_ratio,
        "kl": (result.best.verified or {}).get("kl"),
        "seconds": time.perf_counter() - started,
        "ffn_alignment": context.spec.search_space.ffn_alignment,
    }
    if result.latency is not None:
        best["latency_check"] = result.latency.model_dump(mode="json")
    return best


# --- 3. timing the bests -----------------------------------------------------------------------------


def table_for(loaded: LoadedModel, setting: LatencySetting, dtype: torch.dtype, alignment: int) -> LatencyTable:
    """The setting's latency table: from the store, timed the first time (as a job would)."""
    adapter = loaded.adapter
    key = (device_name(adapter.device), str(dtype).removeprefix("torch."), setting.phase, setting.batch,
           setting.context, alignment)  # fmt: skip
    return loaded.artifacts.get(
        LATENCY_TABLE, key, lambda: build_table(adapter, setting, dtype=dtype, alignment=alignment)
    )


def timed(
    loaded: LoadedModel,
    models: dict[str, tuple[nn.Module, ArchConfig]],
    rows: dict[str, LatencySetting],
    alignment: int,
) -> dict[str, dict[str, Any]]:
    """Predicted (from the table of each setting) and measured milliseconds per step of each model; in
    each setting the models are timed in passes over all of them, as the job's check times its own."""
    figures: dict[str, dict[str, Any]] = {name: {} for name in models}
    dtype = next(next(iter(models.values()))[0].parameters()).dtype
    for label, setting in rows.items():
        table = table_for(loaded, setting, dtype, alignment)
        timers = {name: _pass_timer(model, setting) for name, (model, _) in models.items()}
        measured = least_of_passes(timers, MEASURE_PASSES)
        for name, (_, arch) in models.items():
            figures[name][label] = _figure(table, arch, measured[name], setting)
    return figures


def _pass_timer(model: nn.Module, setting: LatencySetting) -> Callable[[int], float]:
    return lambda _: measured_ms(model, setting, causal=True)


def _figure(table: LatencyTable, arch: ArchConfig, measured_ms: float, setting: LatencySetting) -> dict[str, Any]:
    return {"predicted_ms": table.predict_ms(arch.layers), "measured_ms": measured_ms,
            "stacks_ms": table.uncalibrated().predict_ms(arch.layers), "batch": setting.batch,
            "phase": setting.phase}  # fmt: skip


# --- 4. the table's accuracy over random architectures --------------------------------------------------


def random_arch(shape: ModelShape, alignment: int, rng: random.Random) -> ArchConfig:
    """Per-layer widths drawn from the grid a search chooses from: KV groups and aligned FFN widths, 0
    (dropped) among them, and about one layer in seven dropped whole."""
    heads = [0, *range(shape.group_size, shape.num_heads + 1, shape.group_size)]
    channels = [0, *range(alignment, shape.intermediate_size + 1, alignment)]
    layers = []
    for _ in range(shape.num_layers):
        layer = LayerArch(rng.choice(heads), rng.choice(channels))
        layers.append(LayerArch(0, 0) if rng.random() < 0.15 else layer)
    if not any(layer.heads or layer.ffn_channels for layer in layers):
        layers[0] = LayerArch(shape.num_heads, shape.intermediate_size)
    return ArchConfig(tuple(layers))


def accuracy(
    loaded: LoadedModel, rows: dict[str, LatencySetting], alignment: int, count: int, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """``count`` random architectures built as exported (random weights), predicted and timed as the
    table's calibration models are (passes over all of them)."""
    adapter, rng = loaded.adapter, random.Random(0)
    archs = {f"random {i}": random_arch(adapter.shape, alignment, rng) for i in range(count)}
    figures: dict[str, dict[str, Any]] = {
        name: {"arch": arch.to_dict(), "param_ratio": adapter.shape.count_params(arch) / adapter.shape.dense_params()}
        for name, arch in archs.items()
    }
    for label, setting in rows.items():
        table = table_for(loaded, setting, dtype, alignment)
        points = calibration.measure(
            adapter, setting, dtype, table.split_ms, archs,
            warmup=MEASURE_WARMUP, repeats=MEASURE_REPEATS, min_seconds=MEASURE_SECONDS, passes=MEASURE_PASSES,
        )  # fmt: skip
        for point in points:
            figures[point.name][label] = _figure(table, archs[point.name], point.measured_ms, setting)
    return [figure for figure in figures.values() if all(label in figure for label in rows)]  # the device had room


def tables(loaded: LoadedModel, rows: dict[str, LatencySetting], alignment: int, dtype: torch.dtype) -> dict[str, Any]:
    """Each setting's table: how long it took and how well its fit matched the calibration models."""
    figures = {}
    for label, setting in rows.items():
        table = table_for(loaded, setting, dtype, alignment)
        figures[label] = {
            "seconds": table.build_seconds,
            "base_ms": table.base_ms,
            "layer_ms": table.layer_ms,
            "scale": table.scale,
            "width_scale": table.width_scale,
            "calibration_error": table.calibration_error,
            "calibration": [_calibration_model(table, point) for point in table.calibration],
        }
    return figures


def _calibration_model(table: LatencyTable, point: calibration.Point) -> dict[str, Any]:
    return {"name": point.name, "kept_layers": point.kept_layers, "measured_ms": point.measured_ms,
            "predicted_ms": table.fit.predict_ms(point)}  # fmt: skip


def measure_shape(name: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    loaded, _ = build(name if name in SHAPES else str(ROOT / name), device)
    tokens = random_tokens(loaded, args.tokens, args.seq_len)
    shape = loaded.adapter.shape
    dtype = next(loaded.adapter.model.parameters()).dtype
    print(f"{name}: alignment ...", flush=True)
    aligned = alignment(loaded, args)
    search_setting = {"phase": "decode", "batch": max(args.decode_batches), "context": args.context}
    print(f"{name}: latency tables ...", flush=True)
    # Preparing the latency-targeted job times its table (as a job would) and picks the device's alignment.
    latency_context = prepare(
        loaded, job(args, tokens, {"latency_ratio": args.latency_ratio, "latency": search_setting}), tokens=tokens
    )
    alignment_used = latency_context.spec.search_space.ffn_alignment
    rows = settings(args)
    built = tables(loaded, rows, alignment_used, dtype)
    # Timed before any search, in the process state the tables were timed in: after a search, with its
    # state alive, every step of the 1B shape once ran ~20% longer on the H200, calibration models too
    # (that process had also run the profiler in between, so which of the two it was is not settled).
    print(f"{name}: {args.random_candidates} random architectures ...", flush=True)
    randoms = accuracy(loaded, rows, alignment_used, args.random_candidates, dtype)
    print(f"{name}: latency-targeted search ...", flush=True)
    latency_best = search(latency_context, "latency")
    print(f"{name}: parameter-targeted search at {latency_best['param_ratio']:.3f} ...", flush=True)
    # The same alignment as the latency search's (the device's), so only the target differs.
    spec = job(args, tokens, {"param_ratio": round(latency_best["param_ratio"], 4)})
    spec = spec.model_copy(
        update={"search_space": spec.search_space.model_copy(update={"ffn_alignment": alignment_used})}
    )
    params_best = search(prepare(loaded, spec, tokens=tokens), "params")
    bests = {
        label: (ArchConfig.from_dict(best["arch"]), best)
        for label, best in (("latency-targeted", latency_best), ("parameter-targeted", params_best))
    }
    selections = {label: latency_context.selection(arch) for label, (arch, _) in bests.items()}
    # The bests are timed as a deployment runs them, in a process without a search's state.
    del latency_context
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"{name}: timing dense and the bests ...", flush=True)
    with torch.no_grad():
        models = {"dense": (loaded.adapter.model, shape.dense_arch())}
        for label, (arch, _) in bests.items():
            models[label] = (materialize(loaded.adapter, selections[label], device=device)[0], arch)
        candidates: dict[str, Any] = timed(loaded, models, rows, alignment_used)
        del models
    candidates["dense"]["param_ratio"] = 1.0
    for label, (_, best) in bests.items():
        candidates[label] |= {"param_ratio": best["param_ratio"], "kl": best["kl"]}
    figures = {
        "shape": name,
        "params": shape.dense_params(),
        "alignment": {k: {str(w): ms for w, ms in v.items()} for k, v in aligned.items()},
        "search_setting": search_setting,
        "latency_ratio": args.latency_ratio,
        "latency_search": latency_best,
        "params_search": params_best,
        "candidates": candidates,
        "random_candidates": randoms,
        "tables": built,
    }
    del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


# --- the section -------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def render(shapes: list[dict[str, Any]], meta: dict[str, Any], command: str, rows: dict[str, LatencySetting]) -> str:
    lines = [
        f"Generated by `{command}` on {meta['device']} ({meta['dtype']}, torch {meta['torch']}); random weights,",
        "so the KL column only compares the two searches with each other. Decode: tokens/s of one step with a KV",
        f"cache of {next(iter(rows.values())).context} tokens (batch / step time); prefill: one forward. On a GPU a",
        "step is timed as a replayed CUDA graph (`search.latency_timing`). Each cell: measured (predicted by the",
        "latency table; error = predicted / measured − 1).",
        "",
    ]
    for figures in shapes:
        ratio = figures["latency_ratio"]
        setting = figures["search_setting"]
        lines += [
            f"### {figures['shape']} ({figures['params'] / 1e9:.2f}B parameters)",
            "",
            f"Latency target: {ratio:.0%} of dense in decode at batch {setting['batch']}, context {setting['context']};"
            f" the parameter target is the count the latency-targeted best reached. FFN alignment"
            f" {figures['latency_search']['ffn_alignment']} (the device's rule).",
            "",
        ]
        header = ["model", "params", "verified KL"]
        for label, setting_row in rows.items():
            header.append(f"{label} tokens/s" if setting_row.phase == "decode" else f"{label}×{setting_row.context} ms")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, candidate in figures["candidates"].items():
            cells = [label, f"{candidate['param_ratio']:.3f}", _kl(candidate.get("kl"))]
            for key, setting_row in rows.items():
                figure = candidate[key]
                predicted, measured = figure["predicted_ms"], figure["measured_ms"]
                error = predicted / measured - 1
                if setting_row.phase == "decode":
                    cells.append(
                        f"{setting_row.batch / measured * 1000:,.0f} ({setting_row.batch / predicted * 1000:,.0f};"
                        f" {error:+.0%})"
                    )
                else:
                    cells.append(f"{_ms(measured)} ({_ms(predicted)}; {error:+.0%})")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_accuracy_lines(figures, rows), ""]
        check = figures["latency_search"].get("latency_check")
        if check:
            lines.append(
                f"The latency-targeted job's own check (its verified candidates, decode batch {check['batch']}):"
                f" median |error| {check['median_abs_error']:.1%}; table {check['table']}"
                f" in {check['table_seconds']:.1f} s"
                + (f", calibration fit error {check['table_fit_error']:.1%}." if check.get("table_fit_error") else ".")
            )
            lines.append("")
        lines += _alignment_lines(figures["alignment"])
    return "\n".join(lines)


def _accuracy_lines(figures: dict[str, Any], rows: dict[str, LatencySetting]) -> list[str]:
    """Per setting: the median |prediction error| over the three models above and the random
    architectures, and the setting's table (build time, fitted figures, calibration fit error)."""
    randoms = figures.get("random_candidates", [])
    models = [*figures["candidates"].values(), *randoms]
    lines = [
        f"Prediction error per setting, over the three models above and {len(randoms)} random per-layer"
        " architectures (built as exported, random weights); goal: median within 10%. *Stacks alone*: the"
        " same table before its calibration fit (the stacks' own base and per-layer cost, scales 1). *Scale*:"
        " what a sub-block's stack timing at the narrowest width counts for in a whole model; *width scale*:"
        " what its width adds counts for:",
        "",
        "| setting | median abs error | worst | stacks alone: median | table build s | base ms"
        " | per kept layer ms | scale | width scale | calibration fit error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in rows:
        errors = [abs(m[label]["predicted_ms"] / m[label]["measured_ms"] - 1) for m in models]
        stacks = [abs(m[label]["stacks_ms"] / m[label]["measured_ms"] - 1) for m in models]
        table = figures.get("tables", {}).get(label, {})
        fit = table.get("calibration_error")
        lines.append(
            f"| {label} | {statistics.median(errors):.1%} | {max(errors):.1%} | {statistics.median(stacks):.1%} |"
            f" {table.get('seconds', 0):.1f} |"
            f" {_ms(table.get('base_ms', 0))} | {_ms(table.get('layer_ms', 0))} | {table.get('scale', 1):.2f} |"
            f" {table.get('width_scale', 1):.2f} |"
            f" {'–' if fit is None else f'{fit:.1%}'} |"
        )
    return lines


def _kl(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "–"


def _alignment_lines(aligned: dict[str, dict[str, float]]) -> list[str]:
    """MLP time per width: the rule behind ``device_alignment`` (multiples of 128 in 16-bit on a GPU)."""
    lines = ["MLP (gate, up, down) milliseconds by FFN width, and per 1k channels:", ""]
    widths = list(next(iter(aligned.values())))
    lines += ["| tokens | " + " | ".join(widths) + " |", "|---|" + "---|" * len(widths)]
    for label, by_width in aligned.items():
        cells = [f"{by_width[w]:.4f} ({by_width[w] / int(w) * 1000:.4f})" for w in widths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--shapes", default="llama-1b,llama-8b" if gpu else "tiny",
                        help="comma-separated shape names or model directories (models/ref-llama-13m)")  # fmt: skip
    parser.add_argument("--context", type=int, default=512, help="KV cache (decode) and sequence (prefill) length")
    parser.add_argument("--decode-batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16])
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--latency-ratio", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=12 if gpu else 3)
    parser.add_argument("--random-candidates", type=int, default=8 if gpu else 2,
                        help="random architectures the table's accuracy is also measured on")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=2048 if gpu else 256)
    parser.add_argument("--seq-len", type=int, default=256 if gpu else 32)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    args = parser.parse_args()

    device = torch.device("cuda" if gpu else "cpu")
    meta = {
        "device": torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()})",
        "dtype": "bf16" if gpu else "float32",
        "torch": torch.__version__,
    }
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
    rows = settings(args)
    raw = args.out.with_name(f"{args.out.stem}-latency.json")
    shapes = []
    for name in [s for s in args.shapes.split(",") if s]:
        if name not in SHAPES and not (ROOT / name).is_dir():
            print(f"skipping {name}: neither a shape name nor a model directory", flush=True)
            continue
        started = time.perf_counter()
        shapes.append(measure_shape(name, device, args))
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
        write_section(args.out, SECTION, render(shapes, meta, command.strip(), rows), heading=HEADING)
        raw.write_text(json.dumps({"meta": meta, "shapes": shapes}, indent=2, default=str))
        print(f"wrote {args.out} and {raw}", flush=True)


if __name__ == "__main__":
    main()
