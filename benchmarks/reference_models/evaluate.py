"""Recompute the committed models' held-out perplexity on this machine (CPU by default).

Loads every model in models/ with plain ``AutoModelForCausalLM.from_pretrained`` (float16 weights,
computed in float32) and ``AutoTokenizer.from_pretrained``, tokenises the committed held-out texts
(heldout/docs.txt, heldout/stdlib.txt) with the model's own tokenizer and scores them exactly as
train.py did on the GPU (non-overlapping 512-token windows). Writes results/cpu_check.json with the
GPU figure from results/reference_models.json beside each number and their relative difference.

    python benchmarks/reference_models/evaluate.py                 # full held-out sets (minutes)
    python benchmarks/reference_models/evaluate.py --limit 32      # first 32 windows per set
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from common import HELDOUT, HERE, MODELS_DIR, perplexity, token_stream

RESULTS = HERE / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="windows per held-out set (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "cpu_check.json"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as tf_version

    summary = json.loads((RESULTS / "reference_models.json").read_text())
    report: dict = {
        "hardware": {
            "device": args.device,
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": tf_version,
        },
        "limit_windows": args.limit,
        "models": {},
    }
    for name, info in summary["models"].items():
        directory = MODELS_DIR / name
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(args.device)
        entry = {}
        for domain in ("docs", "stdlib"):
            stream = token_stream(tokenizer, (HELDOUT / f"{domain}.txt").read_text(encoding="utf-8"))
            t0 = time.perf_counter()
            local = perplexity(model, stream, device=args.device, batch_size=8, limit=args.limit)
            gpu = info["heldout"][domain]
            entry[domain] = {
                "ppl": local["ppl"],
                "tokens": local["tokens"],
                "wall_s": round(time.perf_counter() - t0, 1),
                "gpu_ppl": gpu["ppl"],
                "gpu_tokens": gpu["tokens"],
                "relative_difference": (local["ppl"] - gpu["ppl"]) / gpu["ppl"],
            }
            print(
                f"{name} {domain}: {args.device} ppl {local['ppl']:.3f} over {local['tokens']} tokens; "
                f"GPU {gpu['ppl']:.3f} over {gpu['tokens']} ({entry[domain]['relative_difference']:+.2%})",
                flush=True,
            )
        report["models"][name] = entry
    with open(args.out, "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
