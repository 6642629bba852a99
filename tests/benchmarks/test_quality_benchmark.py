"""The quality benchmark end to end on a pretrained reference decoder, at tiny settings.

A small run of ``benchmarks/quality.py`` (``ref-llama-7m``, half the blocks' parameters, every
method, 3 trials per search, 4-candidate neighbourhood audits, a 2-step fine-tune, 4 held-out windows
per domain); the full figures and the command are in ``docs/benchmarks.md``. It checks that every
figure is computed and sane, not which method wins.

The reference corpus (training and validation splits) comes from ``benchmarks/reference_models/
build/corpus`` or the Debian package python3.11-doc; without either, the Python documentation's
topic reference (bundled with CPython; its first 60 KB) stands in for both texts, which is enough for
the mechanics.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "ref-llama-7m"
CORPUS = ROOT / "benchmarks" / "reference_models" / "build" / "corpus"
DOCS_ROOT = Path("/usr/share/doc/python3.11/html/_sources")
METHODS = {
    "search:tracenas",
    "search:kl",
    "search:tracenas+evo",
    "search:kl+evo",
    "oracle",
    "search:prunenet",
    "search:ensemble",
    "search:metanet",
    "search:standard",
    "search:recovery",
    "random",
    "uniform",
    "block_influence",
    "flap",
    "owl",
}


def _texts(tmp_path: Path) -> list[str]:
    if (CORPUS / "train.txt").is_file() or DOCS_ROOT.is_dir():
        return []
    from search.calibration_texts import default_texts

    # The first topics, about 60 KB (15,000 tokens): far more than the run's windows need, and the
    # job checks and recovery tokenise all of it each time (the whole reference, 465 KB, cost ~20 s).
    texts, size = [], 0
    for text in default_texts():
        texts.append(text)
        size += len(text)
        if size >= 60_000:
            break
    stand_in = tmp_path / "topics.txt"
    stand_in.write_text("\n\n".join(texts))
    return ["--train-text", str(stand_in), "--calibration-text", str(stand_in)]


@pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(), reason="the reference decoder is not checked out")
@pytest.mark.timeout(1200)  # about 5 min on a busy 2-core CPU (every method runs; most of it is TraceNAS)
def test_every_method_is_measured_at_the_same_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "benchmarks.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--quick",
        *("--trials", "3", "--oracle-trials", "6", "--audit", "4", "--neighbourhood", "4", "--verify-top-k", "1"),
        *("--calibration", "2", "--seq-len", "32"),
        *("--heldout", "4", "--eval-windows", "4", "--finetune-steps", "2", "--finetune-batch", "2"),
        *("--finetune-seq", "32", "--write", str(out)),
        *_texts(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(out.with_suffix(".json").read_text())
    (figures,) = saved["results"]
    (budget,) = figures["budgets"]
    rows = budget["methods"]
    print(out.read_text())

    assert figures["model"] == "ref-llama-7m" and budget["ratio"] == 0.5
    assert set(rows) == METHODS
    dense = figures["dense"]
    for domain, spread in (("docs", 0.2), ("stdlib", 0.5)):
        # 4 evenly spaced windows of the held-out text: near the documented whole-set figure (code
        # files vary more than documentation pages)...
        documented = figures["documented_ppl"][domain]
        assert abs(dense[domain]["ppl"] / documented - 1) < spread, (domain, dense[domain]["ppl"], documented)
        assert dense[domain]["kl"] == 0.0 and dense[domain]["tokens"] == 4 * 511
        assert math.isfinite(dense["tuned"][domain]["ppl"])
        # ...and exactly what the reference models' own scorer gives on those windows.
        assert dense[domain]["ppl"] == pytest.approx(_reference_ppl(domain), rel=1e-4)

    for method, row in rows.items():
        assert abs(row["budget_deviation"]) <= 0.01, (method, row["budget_deviation"])
        assert row["blocks_ratio"] == pytest.approx(0.5, abs=0.02), method
        for key in ("heldout", "heldout_ft"):
            for domain in ("docs", "stdlib"):
                ppl, kl = row[key][domain]["ppl"], row[key][domain]["kl"]
                assert math.isfinite(ppl) and math.isfinite(kl), (method, key, domain)
                # Pruning half the blocks costs something, and nothing is worse than guessing.
                assert dense[domain]["ppl"] * 0.9 < ppl < 4096, (method, key, domain, ppl)
                assert kl > 0, (method, key, domain)
        assert row["seconds"] > 0 and row["finetune_seconds"] > 0
        if method.startswith("search:") or method == "random":
            assert row["trials"] == 3 and row["verified"]["kl"] > 0
    assert rows["oracle"]["trials"] == 6 and rows["oracle"]["proxy"] == "kl" and rows["oracle"]["sampler"] == "evo"
    # The oracle scores every candidate on all calibration tokens (KL at the 31 next-token positions of each).
    assert rows["oracle"]["tokens_per_trial"] == 2 * 31
    # Only OWL's unstructured sparsity keeps zeros in dense tensors; the rest are physically smaller.
    assert rows["owl"]["param_count"] < rows["owl"]["stored_params"] <= figures["params"]
    assert all(rows[m]["stored_params"] == rows[m]["param_count"] for m in METHODS - {"owl"})

    # The in-job recovery row: the job's own distillation, its winner's figures before and after.
    recovery = rows["search:recovery"]["recovery"]
    winner = next(f for f in recovery["finalists"] if f["trial_number"] == recovery["winner"])
    assert recovery["steps"] == 2 and winner["steps"] == 2 and winner["after"]["kl"] > 0
    # Each timed method's export beside the dense model: the structured ones are smaller on disk.
    default = _default_method()
    timed = {default, "search:standard", "search:recovery", "uniform", "block_influence", "flap", "owl"}
    assert {m for m, r in rows.items() if "speed" in r} == timed
    for method in timed:
        speed = rows[method]["speed"]
        assert speed["decode"] and all(d["pruned_tokens_per_s"] > 0 for d in speed["decode"]), method
        smaller = speed["pruned_size_bytes"] < 0.8 * speed["dense_size_bytes"]
        assert smaller is (method != "owl"), (method, speed["pruned_size_bytes"], speed["dense_size_bytes"])

    text = out.read_text()
    assert "decode batch 1, tokens/s" in text
    assert "## Reading" in text and "| search, prunenet |" in text and "| OWL sparsity (Wanda) |" in text
    assert "(the default) |" in text and "against the oracle" in text and "against random search" in text
    assert "## The defaults, from these figures" in text
    assert out.with_suffix(".png").stat().st_size > 10_000
    # --render reproduces the document from the JSON alone (in this process: no second start-up).
    rerendered = tmp_path / "again.md"
    json_path = str(out.with_suffix(".json"))
    _quality_main(monkeypatch, "--render", json_path, "--write", str(rerendered))
    assert rerendered.read_text() == text.replace("benchmarks.png", "again.png")
    # --merge joins runs (one process per model and budget): a run merged with itself has the same rows.
    merged = tmp_path / "merged.md"
    _quality_main(monkeypatch, "--merge", json_path, json_path, "--write", str(merged))
    rows_of = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line for line in merged.read_text().splitlines() if line.startswith("| ")] == rows_of


def _quality_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    """``benchmarks/quality.py`` with these arguments, run in this process (its --render and --merge
    only read JSON and write Markdown and a plot)."""
    from benchmarks import quality

    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", ["quality.py", *argv])
        quality.main()


def _default_method() -> str:
    """The quality benchmark's row of the job's default proxy and sampler."""
    from search.spec import JobSpec

    proxy, sampler = JobSpec.model_fields["proxy"].default, JobSpec.model_fields["sampler"].default
    return f"search:{proxy}" + ("" if sampler == "tpe" else f"+{sampler}")


def _reference_ppl(domain: str) -> float:
    """benchmarks/reference_models/common.py's perplexity on the 4 evenly spaced windows of a domain."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.spec_from_file_location("reference_common", ROOT / "benchmarks/reference_models/common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    text = (ROOT / f"benchmarks/reference_models/heldout/{domain}.txt").read_text(encoding="utf-8")
    stream = common.token_stream(tokenizer, text)
    windows = common.windows(stream)
    picks = torch.linspace(0, len(windows) - 1, 4).round().long().numpy()
    chosen = windows[picks].reshape(-1)
    return common.perplexity(model, chosen, device="cpu", batch_size=4)["ppl"]
