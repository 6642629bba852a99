"""Bring the device's training outputs into the repository.

    python benchmarks/reference_models/collect.py sweep=/path/to/out1 recipe=/path/to/out2

Each argument is LABEL=DIR, DIR being what train.py wrote to --out (metrics.json, train.log,
<model>.tar or <model>.tar.part-*). For every model, the output whose saved checkpoint has the
lowest loss on the validation split (never the held-out sets) is unpacked into models/<model>/.
Copies each metrics.json and train.log to results/<label>_metrics.json / <label>_train.log and
writes results/reference_models.json (what report.py and the docs read).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

from common import HERE, MODELS_DIR, ROOT

RESULTS = HERE / "results"


def unpack(source: Path, files: list[str], target_root: Path, name: str) -> Path:
    data = b"".join((source / f).read_bytes() for f in sorted(files))
    target = target_root / name
    if target.exists():
        shutil.rmtree(target)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        if any((m.name != name and not m.name.startswith(f"{name}/")) or m.issym() or m.islnk() for m in members):
            raise SystemExit(f"unexpected entries in {name}'s archive")
        tar.extractall(target_root, members=members, filter="data")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", help="LABEL=DIR")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    runs: dict[str, tuple[Path, dict]] = {}
    for item in args.outputs:
        label, _, directory = item.partition("=")
        source = Path(directory)
        metrics = json.loads((source / "metrics.json").read_text())
        if Path(source / "metrics.json").resolve() != (RESULTS / f"{label}_metrics.json").resolve():
            shutil.copyfile(source / "metrics.json", RESULTS / f"{label}_metrics.json")
            if (source / "train.log").exists():
                shutil.copyfile(source / "train.log", RESULTS / f"{label}_train.log")
        runs[label] = (source, metrics)

    summary: dict = {
        "selection": "per model, the device output whose saved checkpoint has the lowest validation-split loss",
        "models": {},
    }
    names = sorted({n for _, m in runs.values() for n in m["models"]})
    for name in names:
        candidates = [
            (m["models"][name]["heldout"]["valid"]["loss"], label)
            for label, (_, m) in runs.items()
            if name in m["models"]
        ]
        _, label = min(candidates)
        source, metrics = runs[label]
        entry = metrics["models"][name]
        target = unpack(source, entry["files"], MODELS_DIR, name)
        weights = target / "model.safetensors"
        chosen = entry["runs"][entry["chosen_run"]]
        summary["models"][name] = {
            "source": label,
            "candidates": {lbl: round(loss, 5) for loss, lbl in candidates},
            "hardware": metrics["hardware"],
            "directory": target.relative_to(ROOT).as_posix(),
            "model_safetensors_bytes": weights.stat().st_size,
            "model_safetensors_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "directory_bytes": sum(p.stat().st_size for p in target.iterdir()),
            "shape": entry["shape"],
            "vocab_size": entry["vocab_size"],
            "parameters": entry["parameters"],
            "non_embedding_parameters": entry["non_embedding_parameters"],
            "lr": entry["lr"],
            "run": {k: v for k, v in chosen.items() if k != "valid_curve"},
            "valid_curve": chosen["valid_curve"],
            "tokens_trained": entry["tokens_trained"],
            "heldout": entry["heldout"],
            "eval": entry["eval"],
            "seq_len": metrics["seq_len"],
        }
        print(f"{name}: from {label} (validation loss {min(candidates)[0]:.4f}) -> {target}")
    summary["data"] = next(iter(runs.values()))[1]["data"]
    (RESULTS / "reference_models.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
