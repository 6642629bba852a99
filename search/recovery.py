"""Recovery after the search: distil the dense model into the best verified candidates, verify them
again, and pick the winner after recovery (Minitron's order: choose after a short distillation, not
before; a candidate that verified second may heal better).

Separate from ``run_search`` on purpose: the search's result (trials, verified finalists) is kept
in the study, so a worker that dies here restarts recovery from the verified finalists without
searching again.

Each finalist is sliced physically (``search.export.materialize``), so the weights trained are the
ones exported, under the same names. Decoders learn KL(dense ‖ student) on the logits at
temperature 1, the figure they are verified by; encoders learn the dense sentence embeddings
(1 − cosine) and their pairwise cosine similarities (the verifier's Spearman agreement is a rank
statistic and has no gradient; matching the similarities is its differentiable stand-in).

Precision: the student is trained in float32 (master weights, AdamW states in float32); on CUDA
the forward passes run under bfloat16 autocast. Figures before and after are computed with the
student in the dense model's dtype, as the verifier computes them; the float32 weights are what the
export receives (it casts them to the dtype it writes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search.adapters import Adapter, Batch
from search.arch import ArchConfig
from search.calibration import TokenSet
from search.calibration_texts import iter_texts, paragraphs
from search.candidates import SearchContext
from search.errors import CalibrationError
from search.export import materialize
from search.loading import adapter_for
from search.lora import add_lora, merge_lora
from search.results import Figures, RecoveredFinalist, RecoveryReport, SearchResult, TrialInfo, Verification
from search.selection import Selection
from search.spec import Recovery
from search.trials import NO_HOOKS, SearchHooks
from search.verify import decoder_figures, encoder_figures

# Training windows sharing a run of this many tokens with a held-out sequence are dropped.
OVERLAP_TOKENS = 32
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class RecoveredModel:
    """The winner, recovered, in memory: its float32 weights on the CPU under the exported model's
    parameter names (``search.export.export_model(..., weights=state)``)."""

    trial_number: int
    selection: Selection
    state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class RecoveryOutcome:
    report: RecoveryReport
    winner: RecoveredModel | None  # None when cancelled before any finalist finished
    stopped: bool


def recovery_finalists(result: SearchResult, count: int) -> list[TrialInfo]:
    """The ``count`` best candidates verified on every held-out sequence, best (lowest) first."""
    trials = {trial.number: trial for trial in result.trials if trial.arch is not None}
    ranked = sorted((v.value, n) for n, v in result.verified.items() if n in trials and math.isfinite(v.value))
    return [trials[number] for _, number in ranked[:count]]


def recover(context: SearchContext, result: SearchResult, *, hooks: SearchHooks = NO_HOOKS) -> RecoveryOutcome:
    """Distil the dense model into the job's best verified finalists; the winner is the lowest after."""
    recovery = context.spec.recovery
    if recovery is None:
        raise ValueError("the job spec asks for no recovery")
    started = time.perf_counter()
    chosen = recovery_finalists(result, recovery.finalists)
    training = training_tokens(context, recovery)
    progress = _Steps(recovery.steps * len(chosen), hooks.on_recover)
    adapter = context.loaded.adapter
    rows: list[RecoveredFinalist] = []
    best: tuple[float, RecoveredModel] | None = None
    stopped = False
    for trial in chosen:
        selection = context.selection(ArchConfig.from_dict(trial.arch))  # type: ignore[arg-type]
        row, state = _recover_one(context, trial, selection, training, progress, hooks)
        rows.append(row)
        if row.after is None:  # cancelled during this finalist
            stopped = True
            break
        value = float(row.after[str(row.after["primary"])])  # type: ignore[arg-type]
        if best is None or value < best[0]:
            best = (value, RecoveredModel(trial.number, selection, state))
    report = RecoveryReport(
        method=recovery.method,
        steps=recovery.steps,
        lora_rank=recovery.lora_rank,
        learning_rate=recovery.rate,
        batch_size=recovery.batch_size,
        training_sequences=len(training.ids),
        device=str(adapter.device),
        precision=_precision(adapter.device),
        primary=rows[0].before["primary"] if rows else ("kl" if adapter.shape.causal else "similarity_gap"),  # type: ignore[arg-type]
        finalists=rows,
        winner=None if stopped or best is None else best[1].trial_number,
        seconds=time.perf_counter() - started,
    )
    return RecoveryOutcome(report, None if stopped or best is None else best[1], stopped)


def _recover_one(
    context: SearchContext,
    trial: TrialInfo,
    selection: Selection,
    training: _Training,
    progress: _Steps,
    hooks: SearchHooks,
) -> tuple[RecoveredFinalist, dict[str, torch.Tensor]]:
    """Materialise one finalist, verify it, distil into it, verify it again."""
    started = time.perf_counter()
    teacher = context.loaded.adapter
    dtype = next(teacher.model.parameters()).dtype
    student, _, _ = materialize(teacher, selection, device=teacher.device)
    student_adapter = adapter_for(student)
    before = student_figures(teacher, student_adapter, context.tokens, context.batch_size)
    losses, steps = _distil(teacher, student_adapter, training, context, progress, hooks, sparse=selection.arch.sparse)
    after: Figures | None = None
    state: dict[str, torch.Tensor] = {}
    if steps == context.spec.recovery.steps:  # type: ignore[union-attr]
        state = {name: t.detach().to("cpu", torch.float32, copy=True) for name, t in student.state_dict().items()}
        student.to(dtype)
        after = student_figures(teacher, student_adapter, context.tokens, context.batch_size).to_dict()
    del student, student_adapter
    row = RecoveredFinalist(
        trial_number=trial.number,
        origin=trial.origin,
        param_count=trial.param_count,
        before=before.to_dict(),
        after=after,
        steps=steps,
        seconds=time.perf_counter() - started,
        loss_first=losses[0] if losses else None,
        loss_last=losses[-1] if losses else None,
    )
    return row, state


def _distil(
    teacher: Adapter,
    student: Adapter,
    training: _Training,
    context: SearchContext,
    progress: _Steps,
    hooks: SearchHooks,
    *,
    sparse: bool,
) -> tuple[list[float], int]:
    """Train ``student`` towards ``teacher``, LoRA merged at the end; returns the losses and the steps
    run (fewer on cancel). ``sparse``: the candidate has unstructured sparsity, whose zeros stay zero."""
    recovery: Recovery = context.spec.recovery  # type: ignore[assignment]
    model = student.model
    model.float()  # float32 master weights
    model.eval()  # no dropout: the student follows the dense model's deterministic outputs
    zeros = _SparsityMask(model) if sparse else None  # before LoRA, whose B starts at zero
    if recovery.lora_rank is not None:
        parameters = add_lora(student.layers, recovery.lora_rank, seed=context.spec.seed or 0)
    else:
        parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recovery.rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(recovery.steps))
    batches = training.batches(recovery.batch_size, teacher.device, seed=context.spec.seed or 0)
    losses: list[float] = []
    for _ in range(recovery.steps):
        if hooks.stop_requested():
            break
        batch = next(batches)
        with _autocast(teacher.device):
            loss = distillation_loss(teacher, student, batch)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        if zeros is not None and recovery.lora_rank is None:
            zeros.apply()  # full training keeps the pruned weights at zero; LoRA's merge is re-zeroed after
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        progress.tick()
    if recovery.lora_rank is not None:
        merge_lora(model)
        if zeros is not None:
            zeros.apply()
    return losses, len(losses)


def distillation_loss(teacher: Adapter, student: Adapter, batch: Batch) -> torch.Tensor:
    """Decoders: KL(dense ‖ student) per real token, temperature 1. Encoders: 1 − cosine to the dense
    embeddings plus the squared error of the in-batch pairwise cosine similarities."""
    with torch.no_grad():
        dense = teacher.forward(batch).float()
    output = student.forward(batch).float()
    if teacher.shape.causal:
        real = batch["attention_mask"][:, 1:].bool()  # predicted tokens that are real, as the verifier counts
        dense_log = F.log_softmax(dense[:, :-1], dim=-1)  # (B, T-1, V)
        student_log = F.log_softmax(output[:, :-1], dim=-1)
        kl = F.kl_div(student_log, dense_log, log_target=True, reduction="none").sum(-1)  # (B, T-1)
        return kl[real].mean()
    cosine = F.cosine_similarity(output, dense, dim=-1)  # (B,)
    student_sim = F.normalize(output, dim=-1) @ F.normalize(output, dim=-1).t()  # (B, B)
    dense_sim = F.normalize(dense, dim=-1) @ F.normalize(dense, dim=-1).t()
    return (1 - cosine).mean() + F.mse_loss(student_sim, dense_sim)


@torch.no_grad()
def student_figures(teacher: Adapter, student: Adapter, tokens: TokenSet, batch_size: int) -> Verification:
    """The verifier's figures (``search.verify``) of a physically sliced model on every held-out sequence."""
    kl_sum = nll_sum = 0.0
    count = 0
    embeddings: list[torch.Tensor] = []
    dense_embeddings: list[torch.Tensor] = []
    for batch in tokens.batches("heldout", batch_size, teacher.device):
        dense, output = teacher.forward(batch).float(), student.forward(batch).float()
        if not teacher.shape.causal:
            embeddings.append(output.cpu())
            dense_embeddings.append(dense.cpu())
            continue
        real = batch["attention_mask"][:, 1:].bool()
        student_log = F.log_softmax(output[:, :-1], dim=-1)  # (B, T-1, V)
        kl = F.kl_div(student_log, F.log_softmax(dense[:, :-1], dim=-1), log_target=True, reduction="none").sum(-1)
        nll = -student_log.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        kl_sum, nll_sum = kl_sum + float(kl[real].sum()), nll_sum + float(nll[real].sum())
        count += int(real.sum())
    if teacher.shape.causal:
        return decoder_figures(kl_sum, nll_sum, count)
    return encoder_figures(torch.cat(embeddings), torch.cat(dense_embeddings), tokens.count("heldout"))


@dataclass(frozen=True)
class _Training:
    ids: torch.Tensor  # (N, T) token ids
    mask: torch.Tensor | None  # (N, T); None = no padding

    def batches(self, batch_size: int, device: torch.device, *, seed: int) -> Iterator[Batch]:
        """Endless seeded passes over the training sequences, reshuffled each pass."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(self.ids), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                ids = self.ids[index].to(device)
                mask = torch.ones_like(ids) if self.mask is None else self.mask[index].to(device)
                yield {"input_ids": ids, "attention_mask": mask}


def training_tokens(context: SearchContext, recovery: Recovery) -> _Training:
    """Sequences of the recovery's texts (the calibration texts by default) with no held-out text in them."""
    calibration = context.spec.calibration
    source, inline = (recovery.source, None) if recovery.source else (calibration.source, calibration.texts)
    texts = list(iter_texts(source, inline))
    tokenizer = context.loaded.tokenizer
    heldout = context.tokens.heldout
    if context.shape.causal:
        separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream: list[int] = []
        for text in texts:
            stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            stream.extend(separator)
        seq_len = heldout.shape[1]
        windows = torch.tensor(stream[: len(stream) // seq_len * seq_len], dtype=torch.long).view(-1, seq_len)
        training = _Training(windows[_without_overlap(windows, heldout)], None)
    else:
        encoded = tokenizer(
            [p for text in texts for p in paragraphs(text)],
            truncation=True,
            max_length=heldout.shape[1],
            padding="max_length",
            return_tensors="pt",
        )
        seen = {tuple(row.tolist()) for row in heldout}
        keep = [i for i, row in enumerate(encoded["input_ids"]) if tuple(row.tolist()) not in seen]
        training = _Training(encoded["input_ids"][keep], encoded["attention_mask"][keep])
    if not len(training.ids):
        raise CalibrationError("recovery: its texts give no training sequence outside the held-out set")
    return training


def _without_overlap(windows: torch.Tensor, heldout: torch.Tensor) -> list[int]:
    """Indices of the windows that share no run of ``OVERLAP_TOKENS`` tokens with a held-out sequence."""
    n = min(OVERLAP_TOKENS, heldout.shape[1])
    held = {tuple(row[i : i + n]) for row in heldout.tolist() for i in range(len(row) - n + 1)}
    return [
        index
        for index, row in enumerate(windows.tolist())
        if not any(tuple(row[i : i + n]) in held for i in range(len(row) - n + 1))
    ]


class _SparsityMask:
    """Where a sparse candidate's block matrices hold zeros, to put them back after an update."""

    def __init__(self, model: nn.Module) -> None:
        self.zeros = {p: p == 0 for p in model.parameters() if p.ndim == 2 and bool((p == 0).any())}

    @torch.no_grad()
    def apply(self) -> None:
        for parameter, zero in self.zeros.items():
            parameter.masked_fill_(zero, 0.0)


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    """The learning rate's factor: a linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _autocast(device: torch.device) -> AbstractContextManager[object]:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _precision(device: torch.device) -> str:
    return "float32 weights, bfloat16 autocast" if device.type == "cuda" else "float32"


class _Steps:
    """Reports optimizer steps over all finalists as (done, total) to ``on_recover``."""

    def __init__(self, total: int, on_recover: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self.on_recover = total, 0, on_recover
        if on_recover is not None:
            on_recover(0, total)

    def tick(self) -> None:
        self.done += 1
        if self.on_recover is not None:
            self.on_recover(self.done, self.total)
