"""How well each proxy ranks pruned candidates by their verified quality, on real pretrained weights.

For each model: a fixed set of random candidates at one budget (diverse depth and width, repaired to
the budget like trials), each verified on the whole held-out split (KL(dense ‖ candidate) per token
for decoders, similarity gap for encoders; lower is better), and scored by every proxy:

- ``tracenas`` (mean over kept sub-blocks) and ``tracenas_sum`` (the authors' depth-biased sum);
- ``prunenet`` and its two halves (``prunenet_mlp``: the authors' FFN-only scope; ``prunenet_attention``:
  our head extension), and ``prunenet_selection`` (tables over the job's Wanda-kept rows instead of
  the policy's);
- ``ensemble`` (prunenet + tracenas ranks, every member run) and ``ensemble_gated`` (the prefilter
  as a job runs it: tracenas only for candidates whose cheap rank is in the top half);
- ``metanet`` after one job and after three jobs of the same family (jobs = ordinary searches at
  other budgets and seeds with ``"proxy": "prunenet"``, whose trust audits fill the store);
- ``kl_calibration``: forward KL on the calibration tokens, the first rung of verification, not a
  zero-shot proxy; it shows what a cheap direct measurement reaches.

Spearman ρ and Kendall τ with bootstrap 95% intervals (sign: +1 = ranks exactly as minus the
verified metric), each proxy's correlation with depth, and its cost per candidate.

    .venv/bin/python benchmarks/proxies.py --write docs/proxies.md         # both reference decoders
    .venv/bin/python benchmarks/proxies.py --models models/ref-llama-7m --candidates 32 --jobs 3

Writes the Markdown document (and a JSON of every figure beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.audit import audit_sequences, population  # noqa: E402
from search.candidates import SearchContext, prepare  # noqa: E402
from search.correlation import spearman  # noqa: E402
from search.ladder import Verifier  # noqa: E402
from search.loading import LoadedModel, load_model  # noqa: E402
from search.masking import apply_arch  # noqa: E402
from search.proxies import Ensemble, MetaNetStore, Priming, Proxy, PruneNet, create_proxy  # noqa: E402
from search.selection import Selection  # noqa: E402
from search.spec import JobSpec  # noqa: E402
from search.study import run_search  # noqa: E402
from search.trust import correlations  # noqa: E402

HELDOUT_DOCS = ROOT / "benchmarks" / "reference_models" / "heldout" / "docs.txt"
REFERENCE_MODELS = ["models/ref-llama-7m", "models/ref-llama-13m"]
ORDER = [
    "tracenas",
    "tracenas_sum",
    "prunenet",
    "prunenet_mlp",
    "prunenet_attention",
    "prunenet_selection",
    "ensemble_equal",
    "ensemble",
    "ensemble_gated",
    "metanet_1job",
    "metanet_3jobs",
    "kl_calibration",
]


def spec_for(model: str, args: argparse.Namespace, *, ratio: float, seed: int, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = dict(
        model=model,
        target={"param_ratio": ratio, "scope": "blocks"},
        seed=seed,
        proxy="prunenet",
        calibration={
            "source": str(HELDOUT_DOCS),
            "n_samples": args.calibration,
            "seq_len": args.seq_len,
            "heldout_samples": args.heldout,
        },
        search_space={"ffn_alignment": 32},
    )
    return JobSpec(**(fields | overrides))


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


@torch.no_grad()
def calibration_kl(context: SearchContext, selections: list[Selection]) -> list[float]:
    """Forward KL(dense ‖ candidate) on the calibration tokens (decoders) — a fidelity, not zero-shot."""
    adapter = context.loaded.adapter
    batches = list(context.tokens.batches("calibration", 8, adapter.device))
    dense = [torch.log_softmax(adapter.forward(b)[:, :-1].float(), -1) for b in batches]
    values = []
    for selection in selections:
        total, count = 0.0, 0
        with apply_arch(adapter, selection):
            for batch, reference in zip(batches, dense, strict=True):
                candidate = torch.log_softmax(adapter.forward(batch)[:, :-1].float(), -1)
                total += float(torch.nn.functional.kl_div(candidate, reference, log_target=True, reduction="sum"))
                count += reference.shape[0] * reference.shape[1]
        values.append(-total / count)  # higher is better, like every proxy
    return values


def run_jobs(loaded: LoadedModel, model: str, args: argparse.Namespace, store_root: Path) -> list[dict[str, Any]]:
    """Ordinary searches (prunenet proxy) whose trust audits fill one store per job."""
    jobs = []
    for index in range(args.jobs):
        ratio = [0.5, 0.7, 0.6, 0.55, 0.65][index % 5]
        seed = 101 + index
        spec = spec_for(
            model, args, ratio=ratio, seed=seed, n_trials=args.job_trials, verify_top_k=2, audit_size=args.audit
        )
        store = MetaNetStore(store_root / f"job{index}")
        context = prepare(loaded, spec)
        started = time.perf_counter()
        result = run_search(context, study_name=f"bench-job{index}", metanet_store=store)
        seconds = time.perf_counter() - started
        jobs.append(
            {
                "index": index,
                "ratio": ratio,
                "seed": seed,
                "store": store,
                "seconds": seconds,
                "audited": result.trust.audit.size if result.trust else 0,
            }
        )
        print(f"  job {index}: budget {ratio}, {jobs[-1]['audited']} audited, {seconds:.0f}s", flush=True)
    return jobs


def metanet_scores(
    loaded: LoadedModel,
    context: SearchContext,
    stores: list[MetaNetStore],
    selections: list[Selection],
    tmp: Path,
    name: str,
    min_records: int,
) -> tuple[list[float], dict[str, Any], float]:
    """Train the meta-network on the union of ``stores`` (nothing from this evaluation) and score.

    Returns the scores, the priming state and the seconds per candidate of scoring.
    """
    merged = MetaNetStore(tmp / name)
    for store in stores:
        merged.add(store.records(context.shape.family))
    proxy = create_proxy(
        "metanet",
        loaded.adapter,
        context.tokens,
        seed=0,
        stats=context.stats,
        artifacts=loaded.artifacts,
        min_records=min_records,
    )
    state = proxy.prime(Priming(list, audit=None, store=merged, job=f"evaluation-{name}", model=context.spec.model))
    if not proxy.ready:
        raise SystemExit(f"metanet not ready with {state['records']} records: {state['note']}")
    values, seconds = timed(lambda: [proxy.score(s).value for s in selections])
    return values, state, seconds / len(selections)


class Memo(Proxy):
    """A proxy whose scores are remembered per architecture (the benchmark scores a set many ways)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy, self.name, self.cost = proxy, proxy.name, proxy.cost
        self.seconds, self.calls, self._seen = 0.0, 0, {}

    def score(self, selection: Selection) -> Any:
        key = selection.arch.to_json()
        if key not in self._seen:
            started = time.perf_counter()
            self._seen[key] = self.proxy.score(selection)
            self.seconds += time.perf_counter() - started
            self.calls += 1
        return self._seen[key]


def correlate(scores: dict[str, list[float]], verified: list[float], candidates: list[Selection], args: Any) -> dict:
    target = [-v for v in verified]
    depth = [sum(lay.attention_kept + lay.mlp_kept for lay in s.arch.layers) for s in candidates]
    rows = {}
    for name, values in scores.items():
        entry = correlations(values, target, seed=args.seed, samples=args.bootstrap)
        entry["depth_spearman"] = spearman(values, depth)
        rows[name] = entry
    return rows


def evaluate_model(model: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(f"== {model}", flush=True)
    loaded, load_s = timed(lambda: load_model(model, device=args.device))
    context = prepare(loaded, spec_for(model, args, ratio=args.ratio, seed=0))
    shape = context.shape
    adapter, tokens = loaded.adapter, context.tokens
    candidates = population(context, args.candidates, seed=args.seed)
    reference = population(context, 16, seed=args.seed + 1)
    print(f"  {len(candidates)} candidates, {len(reference)} reference", flush=True)

    verifier = Verifier(adapter, tokens)
    figures, verify_s = timed(lambda: verifier.evaluate(dict(enumerate(candidates)), verifier.available))
    verified = [figures[i].value for i in range(len(candidates))]
    metric = figures[0].primary
    cheap = Verifier(adapter, tokens)

    def audit(selections: list[Selection]) -> list[float]:  # what run_search's priming does
        keys = {("audit", s.arch.to_json()): s for s in selections}
        done = cheap.evaluate(keys, audit_sequences(cheap))
        return [done[k].value for k in keys]

    scores: dict[str, list[float]] = {}
    cost: dict[str, float] = {}
    tracenas_proxy, tracenas_build = timed(lambda: create_proxy("tracenas", adapter, tokens, seed=0))
    tracenas = Memo(tracenas_proxy)
    results = [tracenas.score(s) for s in candidates]
    scores["tracenas"] = [r.value for r in results]
    scores["tracenas_sum"] = [r.extras["tracenas_sum"] for r in results]
    cost["tracenas"] = cost["tracenas_sum"] = tracenas.seconds / tracenas.calls

    prunenet_proxy, prunenet_build = timed(lambda: create_proxy("prunenet", adapter, tokens, seed=0))
    assert isinstance(prunenet_proxy, PruneNet)
    prunenet = Memo(prunenet_proxy)
    results = [prunenet.score(s) for s in candidates]
    scores["prunenet"] = [r.value for r in results]
    scores["prunenet_mlp"] = [r.extras["prunenet_mlp"] for r in results]
    scores["prunenet_attention"] = [r.extras["prunenet_attention"] for r in results]
    for key in ("prunenet", "prunenet_mlp", "prunenet_attention"):
        cost[key] = prunenet.seconds / prunenet.calls
    by_selection = PruneNet(adapter, policy=prunenet_proxy.policy, order=context.importance)
    scores["prunenet_selection"] = [by_selection.score(s).value for s in candidates]
    cost["prunenet_selection"] = cost["prunenet"]

    states = {}
    for name, weighting in (("ensemble_equal", "equal"), ("ensemble", "audit")):
        ensemble = Ensemble([prunenet, tracenas], weighting=weighting)
        states[name] = ensemble.prime(Priming(lambda: reference, audit=audit))
        scores[name] = [ensemble.score(s, gate=False).value for s in candidates]
        cost[name] = cost["tracenas"] + cost["prunenet"]
    gated_ensemble = Ensemble([prunenet, tracenas])
    gated_ensemble.prime(Priming(lambda: reference, audit=audit))
    gated = [gated_ensemble.score(s) for s in candidates]
    scores["ensemble_gated"] = [r.value for r in gated]
    skipped = sum(r.extras["ensemble_gated"] for r in gated) / len(gated)
    cost["ensemble_gated"] = cost["prunenet"] + (1 - skipped) * cost["tracenas"]

    scores["kl_calibration"], seconds = timed(lambda: calibration_kl(context, candidates))
    cost["kl_calibration"] = seconds / len(candidates)

    metanet: dict[str, Any] = {}
    if args.jobs > 0:
        jobs = run_jobs(loaded, model, args, tmp / Path(model).name)
        one_job = []
        for job in jobs:
            values, state, _ = metanet_scores(
                loaded,
                context,
                [job["store"]],
                candidates,
                tmp,
                f"{Path(model).name}-one-{job['index']}",
                args.min_records,
            )
            one_job.append({"job": job["index"], "values": values, "records": state["records"]})
        three, state3, seconds = metanet_scores(
            loaded, context, [j["store"] for j in jobs], candidates, tmp, f"{Path(model).name}-all", args.min_records
        )
        single_rhos = [spearman(o["values"], [-v for v in verified]) for o in one_job]
        # The table shows the median one-job meta-network; every job's figure is listed below it.
        median_index = sorted(range(len(one_job)), key=lambda i: single_rhos[i] or -2)[len(one_job) // 2]
        scores["metanet_1job"] = one_job[median_index]["values"]
        scores["metanet_3jobs"] = three
        cost["metanet_1job"] = cost["metanet_3jobs"] = seconds
        metanet = {
            "one_job": [
                {"job": o["job"], "records": o["records"], "spearman": single_rhos[i]} for i, o in enumerate(one_job)
            ],
            "one_job_median_index": median_index,
            "three_jobs_records": state3["records"],
            "three_jobs_train_s": state3["seconds"],
            "jobs": [{k: v for k, v in job.items() if k != "store"} for job in jobs],
        }

    rows = correlate(scores, verified, candidates, args)
    for name, row in rows.items():
        row["seconds_per_candidate"] = cost[name]

    # Width only (no sub-block dropped): PruneNet's own regime.
    width_context = prepare(
        loaded, spec_for(model, args, ratio=args.ratio, seed=0, search_space={"ffn_alignment": 32, "depth": "none"})
    )
    width = population(width_context, args.width_candidates, seed=args.seed + 2)
    width_figures = verifier.evaluate({("width", i): s for i, s in enumerate(width)}, verifier.available)
    width_verified = [width_figures[("width", i)].value for i in range(len(width))]
    width_scores = {
        "tracenas": [tracenas.score(s).value for s in width],
        "prunenet": [prunenet.score(s).value for s in width],
        "prunenet_mlp": [prunenet.score(s).extras["prunenet_mlp"] for s in width],
        "prunenet_attention": [prunenet.score(s).extras["prunenet_attention"] for s in width],
        "prunenet_selection": [by_selection.score(s).value for s in width],
        "kl_calibration": calibration_kl(width_context, width),
    }
    width_rows = correlate(width_scores, width_verified, width, args)

    zero_shot = ["tracenas", "prunenet"] + (["metanet_3jobs"] if metanet else [])
    return {
        "model": model,
        "family": shape.family,
        "layers": shape.num_layers,
        "params": shape.dense_params(),
        "metric": metric,
        "budget": args.ratio,
        "candidates": len(candidates),
        "heldout_tokens": figures[0].tokens,
        "verified": {"min": min(verified), "median": statistics.median(verified), "max": max(verified)},
        "depths": sorted({sum(lay.attention_kept + lay.mlp_kept for lay in s.arch.layers) for s in candidates}),
        "rows": rows,
        "width": {"candidates": len(width), "rows": width_rows},
        "ensemble_states": states,
        "gated_share": skipped,
        "prunenet_policy": prunenet_proxy.policy.log,
        "prunenet_build_s": prunenet_build,
        "tracenas_build_s": tracenas_build,
        "verify_s": verify_s,
        "load_s": load_s,
        "metanet": metanet,
        "best_single": max(zero_shot, key=lambda n: rows[n]["spearman"] or -2),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(pair: list[float] | None) -> str:
    return "–" if pair is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


LABELS = {
    "tracenas": "tracenas (mean over kept sub-blocks)",
    "tracenas_sum": "tracenas_sum (authors' sum, depth-biased)",
    "prunenet": "prunenet (FFN + attention)",
    "prunenet_mlp": "prunenet_mlp (FFN only, the authors' scope)",
    "prunenet_attention": "prunenet_attention (heads only, our extension)",
    "prunenet_selection": "prunenet, tables over Wanda-kept rows",
    "ensemble_equal": "ensemble prunenet + tracenas, equal weights (mean rank)",
    "ensemble": "ensemble prunenet + tracenas, audit-weighted (the default)",
    "ensemble_gated": "ensemble as a job runs it (audit-weighted, prefilter rule)",
    "metanet_1job": "metanet after one job (median job)",
    "metanet_3jobs": "metanet after three jobs",
    "kl_calibration": "*reference:* KL on the calibration tokens (a fidelity, not zero-shot)",
}


def _table(rows: dict[str, Any], names: list[str], with_cost: bool) -> list[str]:
    head = "| proxy | ρ | ρ 95% CI | τ | τ 95% CI | depth ρ |" + (" s / candidate |" if with_cost else "")
    lines = [head, "|---|---:|---|---:|---|---:|" + ("---:|" if with_cost else "")]
    for name in names:
        if name not in rows:
            continue
        row = rows[name]
        line = (
            f"| {LABELS[name]} | {_fmt(row['spearman'])} | {_ci(row['spearman_ci'])} | {_fmt(row['kendall'])} | "
            f"{_ci(row['kendall_ci'])} | {_fmt(row['depth_spearman'])} |"
        )
        if with_cost:
            line += f" {row['seconds_per_candidate']:.4f} |"
        lines.append(line)
    return lines


def render(results: list[dict[str, Any]], command: str, meta: dict[str, Any]) -> str:
    lines = [
        "# Proxies: how well each ranks candidates by verified quality",
        "",
        "Generated by `benchmarks/proxies.py`; do not edit by hand. Rerun:",
        "",
        f"    {command}",
        "",
        f"Hardware: {meta['hardware']}; torch {meta['torch']}; Python {meta['python']}; total {meta['seconds']:.0f} s.",
        "",
        "Each model is scored on a fixed set of random candidates at one budget (the share of the decoder "
        "blocks' parameters kept; depth, sub-layer depth and width all vary, repaired to the budget like "
        "trials), verified on the whole held-out split. ρ = Spearman, τ = Kendall τ-b, with 95% bootstrap "
        "intervals; +1 means the proxy orders the candidates exactly as minus the verified metric does. "
        "*depth ρ* is the proxy's Spearman correlation with the number of kept sub-blocks. Seconds per "
        "candidate are wall time on the machine above, shared with other work (for the ensembles: the "
        "members' time; for the meta-network: its prediction, training excluded).",
        "",
    ]
    for r in results:
        rows = r["rows"]
        lines += [
            f"## {r['model']}",
            "",
            f"{r['family']} family, {r['layers']} layers, {r['params'] / 1e6:.1f}M parameters; budget "
            f"{r['budget']} of the blocks; {r['candidates']} candidates with {min(r['depths'])}-{max(r['depths'])} "
            f"of {2 * r['layers']} sub-blocks kept; verified {r['metric']} on {r['heldout_tokens']:,} held-out "
            f"tokens (min {r['verified']['min']:.3f}, median {r['verified']['median']:.3f}, "
            f"max {r['verified']['max']:.3f}).",
            "",
            *_table(rows, ORDER, True),
            "",
        ]
        members = {n: rows[n]["spearman"] for n in ("tracenas", "prunenet")}
        best_member = max(members, key=lambda n: members[n] or -2)
        for name in ("ensemble_equal", "ensemble"):
            value = rows[name]["spearman"]
            verdict = "at least as high as" if (value or -2) >= (members[best_member] or -2) else "LOWER than"
            weights = r["ensemble_states"][name].get("weights", {})
            lines.append(
                f"- {LABELS[name]}: ρ {_fmt(value)} is **{verdict}** the best single member "
                f"({best_member}, ρ {_fmt(members[best_member])}); member weights "
                + ", ".join(f"{k} {v:.2f}" for k, v in weights.items())
                + "."
            )
        gate = r["ensemble_states"]["ensemble"]
        cheap_weight = sum(gate.get("weights", {}).get(name, 0.0) for name in gate.get("cheap", []))
        reason = (
            "the cheap members have no weight"
            if cheap_weight == 0
            else f"cheap members' audit ρ on the reference population {_fmt(gate.get('cheap_audit_spearman'))}, "
            "needed ≥ 0.3"
        )
        lines.append(
            f"- The prefilter {'was on' if gate.get('gating') else 'was off'} ({reason}); tracenas was skipped on "
            f"{r['gated_share']:.0%} of the candidates."
        )
        best = r["best_single"]
        lines.append(f"- Best single zero-shot proxy: {best} (ρ {_fmt(rows[best]['spearman'])}).")
        mn = r["metanet"]
        if mn:
            singles = ", ".join(f"job {o['job']} {_fmt(o['spearman'])} ({o['records']} records)" for o in mn["one_job"])
            lines.append(
                f"- **Meta-network, one job vs three jobs**: trained on one earlier job's audit: {singles}; "
                f"trained on all three ({mn['three_jobs_records']} records, {mn['three_jobs_train_s']:.0f} s): "
                f"ρ {_fmt(rows['metanet_3jobs']['spearman'])}. Jobs: "
                + "; ".join(f"budget {j['ratio']}, seed {j['seed']}, {j['audited']} audited" for j in mn["jobs"])
                + "."
            )
        lines.append(
            f"- TraceNAS depth bias: depth ρ {_fmt(rows['tracenas_sum']['depth_spearman'])} for the authors' sum "
            f"vs {_fmt(rows['tracenas']['depth_spearman'])} for the mean."
        )
        policy = r["prunenet_policy"]
        lines += [
            f"- PruneNet policy: trained in {policy.get('seconds', 0):.1f} s; mean KS at keep ratios 0.35/0.5/0.7, "
            f"FFN {_fmt(policy.get('ffn_ks_before'), 3)} (magnitude start) → {_fmt(policy.get('ffn_ks_after'), 3)}, "
            f"heads {_fmt(policy.get('attention_ks_before'), 3)} → {_fmt(policy.get('attention_ks_after'), 3)}; "
            f"policy and tables {r['prunenet_build_s']:.1f} s.",
            "",
            f"Width only ({r['width']['candidates']} candidates at the same budget with every sub-block kept, "
            "PruneNet's own regime):",
            "",
            *_table(r["width"]["rows"], ORDER, False),
            "",
        ]
    lines += [meta.get("notes", ""), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(REFERENCE_MODELS))
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--width-candidates", type=int, default=30, help="candidates of the width-only set")
    parser.add_argument("--ratio", type=float, default=0.6, help="budget: share of the blocks' parameters kept")
    parser.add_argument("--calibration", type=int, default=16, help="calibration sequences")
    parser.add_argument("--heldout", type=int, default=32, help="held-out sequences (verification)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=3, help="earlier jobs that fill the meta-network's store")
    parser.add_argument("--job-trials", type=int, default=40)
    parser.add_argument("--audit", type=int, default=24, help="audit size of each earlier job")
    parser.add_argument("--min-records", type=int, default=24, help="the meta-network's minimum training data")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", type=Path, default=None, help="the Markdown file to write (and .json beside it)")
    parser.add_argument(
        "--render", type=Path, default=None, help="only re-render --write from this JSON of an earlier run"
    )
    args = parser.parse_args()
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        text = render(saved["results"], saved["command"], saved["meta"] | {"notes": NOTES})
        (args.write or args.render.with_suffix(".md")).write_text(text)
        print(text)
        return
    torch.manual_seed(0)
    started = time.perf_counter()
    command = ".venv/bin/python benchmarks/proxies.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            results.append(evaluate_model(model, args, Path(tmp)))
            meta = {
                "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else " (CPU)"),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "seconds": time.perf_counter() - started,
                "notes": NOTES,
            }
            text = render(results, command, meta)  # written after every model: a long run keeps what it has
            if args.write is not None:
                args.write.parent.mkdir(parents=True, exist_ok=True)
                args.write.write_text(text)
                args.write.with_suffix(".json").write_text(
                    json.dumps({"command": command, "meta": meta, "results": results}, indent=1, default=str)
                )
    print(text)


NOTES = """## How to read this

- **Candidates.** `search.audit.population`: per sub-block keep fractions drawn at random (12% dropped,
  12% whole, else uniform), repaired to the budget exactly as trials are, Wanda selection. The budget
  is 0.6 of the decoder blocks' parameters (embeddings kept whole). The verified metric is KL(dense ‖
  candidate) per token over every held-out sequence of the job's calibration texts (the reference
  models' held-out Python documentation, `benchmarks/reference_models/heldout/docs.txt`).
- **The ensemble rows** all combine the same two members (PruneNet's lookups and TraceNAS's
  forward+backward). *equal weights* is plain mean-rank aggregation against a reference population
  of 16 other random candidates; *audit-weighted* (the default) weighs each member by ρ / (1 − ρ²)
  of its Spearman correlation ρ with the cheaply verified KL of that reference population (KL on the
  first quarter of the held-out sequences), and gives no weight to a member that is significantly
  worse than the best one (lower ρ in ≥ 95% of paired bootstrap resamples) or disagrees (ρ ≤ 0);
  *as a job runs it* adds the prefilter: TraceNAS runs only when the cheap rank is in the top half
  of everything seen so far, otherwise its rank is imputed from the cheap one
  (`search/proxies/ensemble.py` states the rule).
- **The meta-network rows** are trained only on the audits of earlier, ordinary jobs on the same
  model (`"proxy": "prunenet"`, 40 trials, 24 audited candidates each, at budgets 0.5, 0.7 and
  0.6, other seeds), never on the evaluated candidates. *After one job* is the median over the three
  single-job trainings; every single-job figure is listed under the table.
- **Width only**: the same budget with `"depth": "none"` (every sub-block keeps at least one unit),
  i.e. PruneNet's own regime of width pruning, scored by the proxies that need no training.

## What the figures say (the run above)

- **TraceNAS** (mean over kept sub-blocks) ranks these candidates almost exactly as the verified KL
  does on both models, in the mixed-depth and the width-only sets. The authors' sum ranks as well at
  this budget but correlates more with depth on both models; that depth bias is why the service
  optimises the mean and reports the sum beside it as `tracenas_sum`.
- **PruneNet** carries little signal about KL once depth varies: a dropped sub-block counts as the
  largest spectral distance (D = 1), so its score mostly counts kept sub-blocks (depth ρ above 0.9),
  which the verified KL does not reward at this budget. In the width-only set, PruneNet's own
  regime, the signal sits in the **attention heads** (our extension: the output projection's columns,
  whole KV groups), while the authors' FFN-only scope is not positively correlated on either model.
  So the head extension helps for width allocation and stays on (`attention_weight=1`); it does not
  help to trade depth against width, and the FFN part alone does not rank these decoders. REINFORCE
  did not move the FFN policy off its magnitude start on either model (the best checkpoint is the
  start) and improved the head policy slightly; ranking the tables by the Wanda-kept rows instead of
  the policy's rows changes little.
- **Ensembles: as high as the best single proxy, because the weighting drops the weak member.**
  Equal-weight rank aggregation is clearly below TraceNAS on both models: a member without signal
  dilutes it. The default audit weighting matches TraceNAS on both: on the 16 audited reference
  candidates PruneNet correlated clearly less than TraceNAS (on `ref-llama-7m` ρ 0.56 against TraceNAS's
  near 1, significantly lower in the paired bootstrap; on `ref-llama-13m` about 0), so it got no
  weight and the prefilter stayed off. The previous rule (weight = ρ floored at 0; this document's
  git history has its run) kept PruneNet's weight on `ref-llama-7m`, let it prefilter, and ranked
  clearly below TraceNAS: averaging a strong and a weak ranker with comparable say is worse than the
  strong one alone. The ensemble can only beat its best member when the members carry complementary
  signal of comparable strength; with these two proxies on these decoders they do not, and the
  measured outcome is a tie, not a gain.
  Each job's trust report shows every member's correlation and weight on its own audit sample.
- **The meta-network improves with data**: trained on one earlier job's 24 audited candidates it
  ranks well but unevenly (it depends on which job); trained on three jobs' 72 it is as good as
  TraceNAS on both models, at under a five-hundredth of the cost per candidate. It never saw the
  evaluated candidates: what it learned from jobs at other budgets and seeds transferred.
- **KL on the calibration tokens** (forward only) is the ceiling a zero-shot proxy is measured
  against; it is the first rung of the verification ladder, not a proxy a job can select.

## Where this is used

- `"proxy"` in a job spec takes `"tracenas"`, `"prunenet"`, `"metanet"`, `"ensemble"`
  (= `["prunenet", "tracenas"]`) or a list of member names; `search_space.selection: "prunenet"`
  selects FFN rows and KV groups by the trained policy, with no calibration data.
- Every job's report (`GET /v1/jobs/{id}/report`) has `trust`: per proxy used, Spearman and Kendall
  with bootstrap intervals on an audit sample stratified over the proxy's quantiles (verified on the
  first quarter of the held-out sequences), the correlation with parameter count and depth
  (`tracenas` and `tracenas_sum` separately), the priming state (ensemble weights, the
  meta-network's data or why it fell back), and `flagged` with a reason when the job's proxy ranks
  poorly (Spearman < 0.3). `verification.ladder` has the successive-halving rungs (held-out sequences,
  every candidate's figure, the survivors); the baselines are verified on every rung.
- The audited candidates of every job are appended to `{data_dir}/metanet/<family>.jsonl`, the
  meta-network's training data; a `"metanet"` job also audits its 16-candidate reference population
  and trains on those plus every earlier job of the family, or says it has too little data (fewer
  than 24 records) and scores with the ensemble.

Test: `tests/benchmarks/test_proxies_benchmark.py` runs this script on `ref-llama-7m` with 30
candidates and fewer tokens (no meta-network jobs) and checks the figures are computed and sane.
"""

if __name__ == "__main__":
    main()
