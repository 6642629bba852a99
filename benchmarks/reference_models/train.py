"""Train the reference decoders on the GPU (or, slowly and only for a smoke test, on the CPU).

Reads what ``corpus.py build`` prepared (build/tokens/*.npy, build/tokenizer/) and trains every
model in common.MODEL_SHAPES with the fixed recipe in RECIPES (peak learning rate, number of steps).
The step counts were chosen with ``--sweep`` (a sweep over the number of epochs: the corpus is only
~2.8M training tokens, so the right amount of repetition is found on the validation split, never on
the held-out sets). The checkpoint with the lowest validation loss (checked every 5% of the run; in a
sweep, over all runs) is saved in float16 with ``save_pretrained`` together with the tokenizer,
reloaded from disk in float32 and evaluated on both held-out domains.

Training: LlamaForCausalLM (SDPA attention), bf16 autocast over fp32 weights, fused AdamW
(betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up then cosine decay to 10%, gradient
clipping at 1.0, batches of 32 × 512 tokens drawn without replacement from the training stream
(a fresh random offset and order each epoch). A wall-clock budget per run (``--budget-s``; in a sweep
shared by the runs of a model) shortens a run whose measured speed would overrun it; the log and
metrics.json say so ("truncated"), and what was actually run is recorded.

Outputs in --out:
- metrics.json: everything measured (per run and per model), the hardware, the versions
- <model>.tar: the model directory (config.json, generation_config.json, model.safetensors,
  tokenizer files); split into <model>.tar.part-aa, -ab, ... when larger than 15 MB
- train.log

    python benchmarks/reference_models/train.py --out /tmp/ref-models           # on the H200
    python benchmarks/reference_models/train.py --out /tmp/sweep --sweep --budget-s 190
    python benchmarks/reference_models/train.py --out /tmp/smoke --smoke        # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import BUILD, EOS, MODEL_SHAPES, SEQ_LEN, llama_config, perplexity

# The recipe: (peak learning rate, optimizer steps of BATCH x SEQ_LEN tokens; the cosine schedule
# spans them) per model, chosen on the validation split from the sweep (results/sweep_metrics.json)
# and the recipe run (results/recipe_metrics.json). ref-llama-13m: a 1300-step schedule (recipe run)
# validated worse (2.892) than the sweep's 2126-step one (2.822 at its best checkpoint), so 2126.
RECIPES: dict[str, tuple[float, int]] = {
    "ref-llama-7m": (2e-3, 1500),
    "ref-llama-13m": (1.5e-3, 2126),
}
# --sweep: (peak learning rate, [epochs of each run]) per model.
SWEEPS: dict[str, tuple[float, list[int]]] = {
    "ref-llama-7m": (2e-3, [8, 16, 32]),
    "ref-llama-13m": (1.5e-3, [6, 12, 24]),
}
BATCH = 32
PART_BYTES = 15 * 1024 * 1024

_log_file = None


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if _log_file is not None:
        _log_file.write(line + "\n")
        _log_file.flush()


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_loss(model, data: torch.Tensor, device: torch.device, amp: torch.dtype | None) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), 64):
            batch = data[start : start + 64]
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(input_ids=batch).logits
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += batch[:, 1:].numel()
    model.train()
    return total / count


def train_run(
    name: str,
    eos_id: int,
    train_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    lr: float,
    steps: int,
    slot_s: float,
    device: torch.device,
    amp: torch.dtype | None,
    seed: int,
    max_steps: int | None,
    batch_size: int = BATCH,
):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    config = llama_config(name, eos_id)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").to(device)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=device.type == "cuda",
    )
    tokens_per_step = batch_size * SEQ_LEN
    total = max(1, steps)
    if max_steps is not None:
        total = min(total, max_steps)
    planned = total
    warmup = max(1, min(100, total // 20))
    eval_every = max(1, total // 20)
    curve: list[tuple[int, float]] = []
    best = (float("inf"), -1, None)
    order: torch.Tensor | None = None
    cursor = 0
    step = 0
    t0 = time.perf_counter()
    t_measure = None
    last_loss = float("nan")
    while step < total:
        if order is None or cursor + batch_size > len(order):
            offset = int(torch.randint(0, SEQ_LEN, (1,), generator=gen))
            n = (len(train_ids) - offset) // SEQ_LEN
            view = train_ids[offset : offset + n * SEQ_LEN].view(n, SEQ_LEN)
            order = torch.randperm(n, generator=gen).to(device)
            cursor = 0
        batch = view[order[cursor : cursor + batch_size]]
        cursor += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, lr)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(input_ids=batch).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step == 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_measure = time.perf_counter()
        if step == 40 and t_measure is not None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - t_measure) / 30
            projected = (time.perf_counter() - t0) + per_step * (total - step) * 1.08  # + evaluations
            if projected > slot_s:
                new_total = max(step + 1, int(step + (slot_s - (time.perf_counter() - t0)) / (per_step * 1.08)))
                log(
                    f"  {name} lr={lr} steps={planned}: {per_step * 1e3:.1f} ms/step, projected {projected:.0f}s > "
                    f"slot {slot_s:.0f}s: steps {total} -> {new_total}"
                )
                total = new_total
                eval_every = max(1, total // 20)
            else:
                log(
                    f"  {name} lr={lr} steps={planned}: {per_step * 1e3:.1f} ms/step, {total} steps, "
                    f"projected {projected:.0f}s (slot {slot_s:.0f}s)"
                )
        if step % eval_every == 0 or step == total:
            last_loss = float(loss.detach())
            val = evaluate_loss(model, valid, device, amp)
            curve.append((step, round(val, 5)))
            if val < best[0]:
                best = (val, step, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            log(f"  {name} step {step}/{total} train {last_loss:.4f} valid {val:.4f} ({time.perf_counter() - t0:.1f}s)")
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    record = {
        "lr": lr,
        "steps_planned": planned,
        "truncated": total < planned,
        "steps": total,
        "tokens": total * tokens_per_step,
        "epochs": round(total * tokens_per_step / len(train_ids), 2),
        "warmup_steps": warmup,
        "batch": [batch_size, SEQ_LEN],
        "wall_s": round(wall, 1),
        "tokens_per_s": round(total * tokens_per_step / wall),
        "final_train_loss": round(last_loss, 4),
        "best_valid_loss": round(best[0], 5),
        "best_step": best[1],
        "valid_curve": curve,
    }
    del model, opt
    return record, best[2], config


def save_model(name: str, state: dict, config, tokenizer_dir: Path, target: Path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    model.load_state_dict(state)
    model = model.to(torch.float16)
    if target.exists():
        shutil.rmtree(target)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(target)


def pack(model_dir: Path, out: Path) -> list[str]:
    tar_path = out / f"{model_dir.name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(model_dir, arcname=model_dir.name)
    size = tar_path.stat().st_size
    if size <= PART_BYTES:
        return [tar_path.name]
    names = []
    with tar_path.open("rb") as src:
        for i in range(math.ceil(size / PART_BYTES)):
            part = out / f"{tar_path.name}.part-{chr(97 + i // 26)}{chr(97 + i % 26)}"
            part.write_bytes(src.read(PART_BYTES))
            names.append(part.name)
    tar_path.unlink()
    return names


def main() -> None:
    global _log_file
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--build", type=Path, default=BUILD)
    parser.add_argument("--models", default=",".join(MODEL_SHAPES))
    parser.add_argument(
        "--budget-s", type=float, default=400.0, help="wall-clock budget per run (per model with --sweep)"
    )
    parser.add_argument("--sweep", action="store_true", help="sweep the number of epochs (SWEEPS) instead of RECIPES")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps per run on small data (CPU test)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _log_file = (args.out / "train.log").open("a")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None

    from transformers import AutoTokenizer
    from transformers import __version__ as tf_version
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer_dir = args.build / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    tokens = {
        s: np.load(args.build / "tokens" / f"{s}.npy") for s in ("train", "valid", "heldout_docs", "heldout_stdlib")
    }
    batch_size = BATCH
    if args.smoke:
        tokens = {k: v[: 4 * SEQ_LEN] for k, v in tokens.items()}
        tokens["train"] = np.load(args.build / "tokens" / "train.npy")[: 40 * SEQ_LEN]
        batch_size = 2
    train_ids = torch.from_numpy(tokens["train"].astype(np.int64)).to(device)
    n_valid = len(tokens["valid"]) // SEQ_LEN
    valid = torch.from_numpy(tokens["valid"][: n_valid * SEQ_LEN].astype(np.int64)).view(n_valid, SEQ_LEN).to(device)

    metrics: dict = {
        "hardware": {
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
            "cpu_count": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": tf_version,
        },
        "data": {s: {"tokens": len(v)} for s, v in tokens.items()},
        "seq_len": SEQ_LEN,
        "batch": batch_size,
        "smoke": args.smoke,
        "models": {},
    }
    log(
        f"device {metrics['hardware']['device']}, torch {torch.__version__}, transformers {tf_version}; "
        f"train tokens {len(train_ids)}, valid windows {n_valid}"
    )
    t_all = time.perf_counter()
    for name in args.models.split(","):
        steps_per_epoch = (len(train_ids) - SEQ_LEN) // (batch_size * SEQ_LEN)
        if args.sweep:
            lr, epochs_list = SWEEPS[name]
            planned_steps = [round(e * steps_per_epoch) for e in epochs_list]
        else:
            lr, steps = RECIPES[name]
            planned_steps = [steps]
        t_model = time.perf_counter()
        runs, best_state, best_config, best_index = [], None, None, -1
        for i, steps in enumerate(planned_steps):
            remaining = args.budget_s - (time.perf_counter() - t_model)
            slot = remaining * planned_steps[i] / sum(planned_steps[i:])
            record, state, config = train_run(
                name,
                eos_id,
                train_ids,
                valid,
                lr=lr,
                steps=steps,
                slot_s=slot,
                device=device,
                amp=amp,
                seed=args.seed,
                max_steps=4 if args.smoke else None,
                batch_size=batch_size,
            )
            runs.append(record)
            log(
                f"{name} run {i}: {record['steps']} steps, {record['tokens'] / 1e6:.1f}M tokens, "
                f"{record['wall_s']}s, best valid {record['best_valid_loss']} at step {record['best_step']}"
            )
            if best_index < 0 or record["best_valid_loss"] < runs[best_index]["best_valid_loss"]:
                best_index, best_state, best_config = i, state, config
        train_wall = time.perf_counter() - t_model
        model_dir = args.out / "models" / name
        save_model(name, best_state, best_config, tokenizer_dir, model_dir)

        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        n_params = sum(p.numel() for p in reloaded.parameters())
        heldout = {}
        for domain, split in (("docs", "heldout_docs"), ("stdlib", "heldout_stdlib"), ("valid", "valid")):
            heldout[domain] = perplexity(reloaded, tokens[split], device=device, batch_size=32)
            log(f"{name} {domain}: ppl {heldout[domain]['ppl']:.3f} over {heldout[domain]['tokens']} tokens")
        chosen = runs[best_index]
        metrics["models"][name] = {
            "shape": MODEL_SHAPES[name],
            "vocab_size": best_config.vocab_size,
            "parameters": n_params,
            "non_embedding_parameters": n_params - 2 * best_config.vocab_size * best_config.hidden_size,
            "lr": lr,
            "mode": "sweep" if args.sweep else "recipe",
            "runs": runs,
            "chosen_run": best_index,
            "tokens_trained": chosen["best_step"] * batch_size * SEQ_LEN,
            "chosen_run_wall_s": chosen["wall_s"],
            "all_runs_wall_s": round(train_wall, 1),
            "heldout": heldout,
            "eval": "float16 weights loaded in float32, non-overlapping 512-token windows",
            "files": pack(model_dir, args.out),
        }
        shutil.rmtree(args.out / "models")
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        del reloaded, best_state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    metrics["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log(f"done in {metrics['total_wall_s']}s")


if __name__ == "__main__":
    main()
