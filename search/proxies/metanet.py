"""The meta-network: a learned predictor of verified quality over the layer graph.

Not MetaPruning's method (a GNN over every neuron that rewrites weights, which does not scale to
LLMs; methods.md §3.5): a small sequence model over the *sub-block* graph, which learns from the
candidates the service has verified.

- **Graph.** Nodes are the sub-blocks in residual order (attention.0, mlp.0, attention.1, ...);
  edges follow the residual stream, so the model is a bidirectional GRU over that chain.
- **Node features** (``FEATURES``): sub-block kind, depth position, keep fraction, dropped flag,
  unstructured sparsity, the PruneNet spectral distance D_b, the share of the block's Wanda
  importance the candidate removes, the layer's Block Influence, the block's activation scale (log
  of its total Wanda mass, standardised over the model) from ``DenseStats``, and the TraceNAS term
  1 − ρ_b with an availability flag (filled only when a TraceNAS instance is given: it costs a
  backward pass per candidate; off by default).
- **Output.** Each node contributes damage_b = softplus(head(h_b)) · removed_b, where removed_b
  = 1 − keep_b·(1 − sparsity_b) is the fraction of the block removed; the prediction is
  log Σ_b damage_b, trained against log(verified metric) (KL for decoders, similarity gap for
  encoders; lower is better). An unpruned candidate therefore predicts the least damage by
  construction. The proxy's score is minus the prediction. About 3.5k parameters; three seeds are
  averaged.
- **Training data.** Audited candidates (features + cheaply verified metric), persisted by
  ``MetaNetStore`` as one JSON-lines file per model family under a directory the caller chooses
  (the worker passes ``{data_dir}/metanet/``): every job's trust audit is appended, and a job whose
  proxy is ``metanet`` first audits its reference population and trains on those records plus every
  earlier job's of the same family. The loss is the mean squared error of the prediction centred
  within each job (only ranks within a job matter, and jobs differ in calibration and budget) plus
  a tenth of the uncentred error (to keep the scale).
- **Not enough data.** Below ``min_records`` usable records the proxy says so
  (``metanet_ready`` = 0 in every trial's scores and the reason in the priming state the report
  shows) and scores with its fallback ensemble (PruneNet + TraceNAS) instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search.adapters import Adapter, Block
from search.artifacts import Artifact
from search.criteria import compute_importance
from search.errors import ProxyError
from search.names import DEFAULT_ENSEMBLE
from search.proxies.base import COST_FORWARD, Priming, Proxy, ProxyBuild, ProxyScore
from search.proxies.ensemble import Ensemble
from search.proxies.metanet_store import RECORD_VERSION
from search.proxies.prunenet import PruneNet
from search.proxies.tracenas import TraceNAS
from search.selection import Selection
from search.spectra import one_cpu_thread
from search.stats import DenseStats
from search.units import Importance

FEATURES = (
    "attention",
    "position",
    "keep",
    "dropped",
    "sparsity",
    "prunenet",
    "importance_removed",
    "block_influence",
    "activation",
    "tracenas",
    "tracenas_available",
)
_TRACENAS_COLUMNS = (FEATURES.index("tracenas"), FEATURES.index("tracenas_available"))
MIN_RECORDS = 24
_EPS = 1e-6
_METRIC_FLOOR = 1e-8


class FeatureBuilder:
    """Node features of a candidate (module docstring); built once per (model, calibration)."""

    def __init__(self, adapter: Adapter, stats: DenseStats, prunenet: PruneNet, wanda: Importance) -> None:
        self.adapter = adapter
        self.prunenet = prunenet
        self.wanda = wanda
        influence = stats.block_influence.double()
        self.influence = (influence / influence.mean().clamp(min=1e-12)).tolist()
        masses = torch.tensor(
            [
                [float(self.wanda.head_groups[i].sum()), float(self.wanda.channels[i].sum())]
                for i in range(adapter.shape.num_layers)
            ],
            dtype=torch.float64,
        ).clamp(min=1e-12)
        logs = masses.log()
        self.activation = ((logs - logs.mean()) / logs.std().clamp(min=1e-12)).tolist()  # (L, 2)

    def nodes(
        self, selection: Selection, tracenas_terms: dict[Block, float] | None = None
    ) -> tuple[list[list[float]], list[float]]:
        """(features (2L × len(FEATURES)), removed fraction (2L)), in residual order."""
        shape = self.adapter.shape
        spectral = dict(self.prunenet.block_terms(selection.arch))
        layers = shape.num_layers
        features, removed = [], []
        for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
            for kind in ("attention", "mlp"):
                block = Block(i, kind)
                if kind == "attention":
                    keep = layer.heads / shape.num_heads
                    scores, chosen = self.wanda.head_groups[i], kept.kv_groups
                else:
                    keep = layer.ffn_channels / shape.intermediate_size
                    scores, chosen = self.wanda.channels[i], kept.channels
                sparsity = layer.sparsity if keep > 0 else 0.0
                total = float(scores.sum())
                share_kept = float(scores[chosen].sum()) / total if total > 0 and keep > 0 else float(keep > 0)
                term = None if tracenas_terms is None else tracenas_terms.get(block)
                features.append(
                    [
                        1.0 if kind == "attention" else 0.0,
                        i / max(layers - 1, 1),
                        keep,
                        1.0 if keep == 0 else 0.0,
                        sparsity,
                        spectral[block],
                        1.0 - share_kept * (1.0 - sparsity),
                        self.influence[i],
                        self.activation[i][0 if kind == "attention" else 1],
                        (1.0 - term if term is not None else 1.0) if tracenas_terms is not None else 0.0,
                        1.0 if tracenas_terms is not None else 0.0,
                    ]
                )
                removed.append(1.0 - keep * (1.0 - sparsity))
        return features, removed


# Node features per (calibration digest, seed).
FEATURES_OF_MODEL: Artifact[tuple[str, int], FeatureBuilder] = Artifact("metanet-features")


def feature_builder(build: ProxyBuild) -> FeatureBuilder:
    """The meta-network's node features for ``build``'s model and calibration (cached)."""

    def make() -> FeatureBuilder:
        stats = build.stats()
        wanda = compute_importance(
            build.adapter, stats, "wanda", artifacts=build.artifacts, digest=build.tokens.digest, seed=build.seed
        )
        # The spectral features use the calibration-free policy's tables, whatever the job selects.
        return FeatureBuilder(build.adapter, stats, PruneNet.create(build.without_options()), wanda)

    return build.artifacts.get(FEATURES_OF_MODEL, (build.tokens.digest, build.seed), make)


def make_record(
    builder: FeatureBuilder,
    selection: Selection,
    metric: float,
    *,
    metric_name: str,
    job: str,
    model: str,
    tracenas_terms: dict[Block, float] | None = None,
) -> dict[str, Any]:
    features, removed = builder.nodes(selection, tracenas_terms)
    return {
        "version": RECORD_VERSION,
        "family": builder.adapter.shape.family,
        "metric": metric_name,
        "model": model,
        "job": job,
        "value": float(metric),
        "target": math.log(max(float(metric), _METRIC_FLOOR)),
        "names": list(FEATURES),
        "features": features,
        "removed": removed,
        "arch": selection.arch.to_dict(),
    }


class _Net(nn.Module):
    """Per-node embedding → bidirectional GRU along the residual order → per-node damage."""

    def __init__(self, features: int, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(features, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(3 * hidden, 1)

    def forward(self, x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.embed(x))  # (B, N, h)
        context, _ = self.gru(h)  # (B, N, 2h)
        damage = F.softplus(self.head(torch.cat([h, context], -1))).squeeze(-1) * removed  # (B, N)
        return torch.log(damage.sum(-1) + _EPS)  # (B,) predicted log metric


class MetaNetModel:
    """A trained predictor: several seeds averaged in log space."""

    def __init__(self, nets: list[_Net], use_tracenas: bool) -> None:
        self.nets = nets
        self.use_tracenas = use_tracenas

    @torch.no_grad()
    def predict(self, features: Sequence[Sequence[Sequence[float]]], removed: Sequence[Sequence[float]]) -> list[float]:
        x, r = _tensors(features, removed, self.use_tracenas)
        with one_cpu_thread():
            return torch.stack([net(x, r) for net in self.nets]).mean(0).tolist()

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.nets[0].parameters())


def fit(
    records: Sequence[dict[str, Any]],
    *,
    seed: int = 0,
    seeds: int = 3,
    epochs: int = 200,
    lr: float = 0.01,
    use_tracenas: bool = False,
) -> MetaNetModel:
    """Train on records (``make_record``); deterministic under ``seed``."""
    if not records:
        raise ProxyError("the meta-network has no records to train on")
    by_length: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_length.setdefault(len(record["features"]), []).append(record)
    batches = []
    for group in by_length.values():
        x, r = _tensors([g["features"] for g in group], [g["removed"] for g in group], use_tracenas)
        y = torch.tensor([g["target"] for g in group])
        jobs = sorted({g["job"] for g in group})
        job_index = torch.tensor([jobs.index(g["job"]) for g in group])
        batches.append((x, r, y, job_index, len(jobs)))
    nets = []
    with torch.random.fork_rng(devices=[]), one_cpu_thread():
        for k in range(seeds):
            torch.manual_seed(seed * 7919 + k)
            net = _Net(len(FEATURES))
            optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
            for _ in range(epochs):
                optimizer.zero_grad()
                loss = torch.zeros(())
                for x, r, y, job_index, jobs in batches:
                    prediction = net(x, r)
                    centred = _centred(prediction, job_index, jobs) - _centred(y, job_index, jobs)
                    loss = loss + centred.pow(2).mean() + 0.1 * (prediction - y).pow(2).mean()
                loss.backward()
                optimizer.step()
            net.eval()
            for parameter in net.parameters():
                parameter.requires_grad_(False)
            nets.append(net)
    return MetaNetModel(nets, use_tracenas)


def _centred(values: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    sums = torch.zeros(count).index_add(0, groups, values)
    sizes = torch.zeros(count).index_add(0, groups, torch.ones_like(values))
    return values - (sums / sizes)[groups]


def _tensors(
    features: Sequence[Sequence[Sequence[float]]], removed: Sequence[Sequence[float]], use_tracenas: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(features, dtype=torch.float32)  # (B, N, F)
    if not use_tracenas:
        x[..., list(_TRACENAS_COLUMNS)] = 0.0
    return x, torch.tensor(removed, dtype=torch.float32)


class MetaNet(Proxy):
    """``"proxy": "metanet"`` (module docstring)."""

    name = "metanet"
    cost = COST_FORWARD

    def __init__(
        self,
        builder: FeatureBuilder,
        fallback: Callable[[], Proxy],
        *,
        metric: str,
        seed: int = 0,
        min_records: int = MIN_RECORDS,
        tracenas: TraceNAS | None = None,
        epochs: int = 200,
    ) -> None:
        self.builder = builder
        self.metric = metric
        self.seed = seed
        self.min_records = min_records
        self.epochs = epochs
        self.tracenas = tracenas  # a TraceNAS whose per-block terms become features (costly)
        self._fallback_factory = fallback
        self._fallback: Proxy | None = None
        self.model: MetaNetModel | None = None
        self.pending: list[dict[str, Any]] = []  # this job's primed records, stored when the job ends
        self.state: dict[str, Any] = {"ready": False, "note": "not primed"}

    @classmethod
    def create(cls, build: ProxyBuild) -> MetaNet:
        use_tracenas = bool(build.options.get("metanet_tracenas", False))
        min_records = int(build.options.get("min_records", MIN_RECORDS))
        epochs = int(build.options.get("metanet_epochs", 200))
        key = ("metanet", build.tokens.digest, build.seed, use_tracenas, min_records, epochs)
        return build.reuse(
            key,
            lambda: cls(
                feature_builder(build),
                lambda: Ensemble.of(build, DEFAULT_ENSEMBLE),
                metric="kl" if build.adapter.shape.causal else "similarity_gap",
                seed=build.seed,
                min_records=min_records,
                tracenas=TraceNAS.create(build) if use_tracenas else None,
                epochs=epochs,
            ),
        )

    @property
    def family(self) -> str:
        return self.builder.adapter.shape.family

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def members(self) -> list[Proxy]:
        if self.ready or self._fallback is None:
            return []
        return [self._fallback, *self._fallback.members]

    def fallback(self) -> Proxy:
        if self._fallback is None:
            self._fallback = self._fallback_factory()
        return self._fallback

    def record(self, selection: Selection, metric: float, *, job: str, model: str) -> dict[str, Any]:
        terms = self.tracenas.block_terms(selection) if self.tracenas is not None else None
        return make_record(
            self.builder, selection, metric, metric_name=self.metric, job=job, model=model, tracenas_terms=terms
        )

    def prime(self, priming: Priming) -> dict[str, Any]:
        started = time.perf_counter()
        previous = priming.previous or {}
        stored = priming.store.records(self.family) if priming.store is not None else []
        if previous.get("store_records") is not None:
            stored = stored[: int(previous["store_records"])]  # a resumed job trains on the same data
        store_count = len(stored)
        stored = [r for r in stored if r.get("job") != priming.job and r.get("metric") == self.metric]
        self.pending = []
        if priming.audit is not None and priming.population:
            metrics = priming.audit(priming.population)
            self.pending = [
                self.record(s, m, job=priming.job, model=priming.model)
                for s, m in zip(priming.population, metrics, strict=True)
            ]
        data = stored + self.pending
        jobs = {r["job"] for r in data}
        self.model = None
        if len(data) >= self.min_records:
            self.model = fit(data, seed=self.seed, epochs=self.epochs, use_tracenas=self.tracenas is not None)
            note = f"trained on {len(data)} audited candidates from {len(jobs)} job(s)"
            fallback_state = None
        else:
            note = (
                f"not enough data: {len(data)} audited candidates of the {self.family} family, {self.min_records} "
                "needed; this job is scored by the fallback ensemble (prunenet + tracenas)"
            )
            fallback = self.fallback()
            fallback_state = fallback.prime(priming)
        self.state = {
            "ready": self.ready,
            "note": note,
            "records": len(data),
            "records_this_job": len(self.pending),
            "jobs": len(jobs),
            "min_records": self.min_records,
            "store_records": store_count,
            "parameters": self.model.parameters if self.model is not None else None,
            "seconds": time.perf_counter() - started,
        }
        if fallback_state is not None:
            self.state["fallback"] = fallback_state
        return self.state

    def score(self, selection: Selection) -> ProxyScore:
        if self.model is None:
            if self._fallback is None:
                raise ProxyError("the meta-network was not primed (run_search does this)")
            scored = self._fallback.score(selection)
            extras = {**scored.extras, "metanet_ready": 0.0, self._fallback.name: scored.value}
            return ProxyScore(scored.value, extras, scored.timings)
        started = time.perf_counter()
        terms = self.tracenas.block_terms(selection) if self.tracenas is not None else None
        features, removed = self.builder.nodes(selection, terms)
        predicted = self.model.predict([features], [removed])[0]
        if not math.isfinite(predicted):
            raise ProxyError("the meta-network's prediction is not finite")
        timings = {"predict_s": time.perf_counter() - started}
        return ProxyScore(-predicted, {"metanet_ready": 1.0, "metanet_log_metric": predicted}, timings)
