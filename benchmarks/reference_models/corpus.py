"""Build the offline corpus, the BPE tokenizer and the token arrays for the reference models (CPU only).

Domains
- docs:   the Python 3.11 documentation sources (reStructuredText) from the Debian package
          ``python3.11-doc`` (``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``).
          Split by a hash of each file's path: 10% held-out, 5% validation (model selection),
          85% training. Path hashes keep the split fixed when file contents change.
- stdlib: the Python standard library's own source (``sysconfig.get_paths()['stdlib']``), never
          trained on: a second, out-of-domain held-out set. ``*.py`` files, without test packages
          (``test``, ``tests``, ``idle_test``), ``site-packages`` and ``pydoc_data`` (that one is docs
          prose). A fixed 10% of files by path hash keeps it small.

Outputs (``build/`` is ignored by git)
- build/corpus/{train,valid,heldout_docs,heldout_stdlib}.txt: documents joined by a line ``<|endoftext|>``
- build/corpus/manifest.json: sources, versions, files per split, sizes, sha256 of each split file
- build/tokenizer/: byte-level BPE (vocab 4096) trained on the training split only, saved with
  ``save_pretrained`` (loads with ``AutoTokenizer.from_pretrained``)
- build/tokens/*.npy: uint16 token streams of every split (what train.py reads)

Usage
    python benchmarks/reference_models/corpus.py build     # corpus + tokenizer + tokens
    python benchmarks/reference_models/corpus.py freeze    # copy held-out texts to heldout/ (committed)
    python benchmarks/reference_models/corpus.py check     # rebuilt held-out texts == committed ones?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
from common import BUILD, DOC_SEPARATOR, EOS, HELDOUT, VOCAB_SIZE, token_stream

DOCS_ROOT = Path("/usr/share/doc/python3.11/html/_sources")
STDLIB_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"}
SPLITS = ("train", "valid", "heldout_docs", "heldout_stdlib")


def bucket(domain: str, relpath: str) -> int:
    return int(hashlib.sha256(f"{domain}:{relpath}".encode()).hexdigest()[:8], 16) % 100


def docs_split(relpath: str) -> str:
    b = bucket("docs", relpath)
    return "heldout_docs" if b < 10 else "valid" if b < 15 else "train"


def read_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    if EOS in text:
        raise SystemExit(f"{path} contains the separator {EOS!r}")
    return text.strip("\n") + "\n"


def debian_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return out.stdout.strip() or None


def collect(docs_root: Path, stdlib_root: Path) -> dict[str, list[tuple[str, Path]]]:
    if not docs_root.is_dir():
        raise SystemExit(
            f"{docs_root} not found: install the Debian package python3.11-doc (apt-get install -y python3.11-doc)"
        )
    parts: dict[str, list[tuple[str, Path]]] = {s: [] for s in SPLITS}
    for path in sorted(docs_root.rglob("*.rst.txt")):
        rel = path.relative_to(docs_root).as_posix()
        parts[docs_split(rel)].append((f"docs/{rel}", path))
    for path in sorted(stdlib_root.rglob("*.py")):
        rel = path.relative_to(stdlib_root)
        if any(p in STDLIB_EXCLUDED_DIRS for p in rel.parts[:-1]):
            continue
        if bucket("stdlib", rel.as_posix()) < 10:
            parts["heldout_stdlib"].append((f"stdlib/{rel.as_posix()}", path))
    return parts


def build_corpus(out: Path, docs_root: Path, stdlib_root: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    parts = collect(docs_root, stdlib_root)
    manifest: dict = {
        "sources": {
            "docs": {
                "root": str(docs_root),
                "debian_package": "python3.11-doc",
                "version": debian_version("python3.11-doc"),
            },
            "stdlib": {
                "root": str(stdlib_root),
                "python": sys.version.split()[0],
                "excluded_dirs": sorted(STDLIB_EXCLUDED_DIRS),
            },
        },
        "split_rule": "sha256('<domain>:<relative path>')[:8] % 100: docs <10 heldout, <15 valid, else train; "
        "stdlib <10 heldout (all others unused)",
        "splits": {},
    }
    for split in SPLITS:
        text = DOC_SEPARATOR.join(read_text(p) for _, p in parts[split])
        (out / f"{split}.txt").write_text(text, encoding="utf-8")
        data = text.encode("utf-8")
        manifest["splits"][split] = {
            "documents": len(parts[split]),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "files": [name for name, _ in parts[split]],
        }
        print(f"{split:15s} {len(parts[split]):4d} files {len(data) / 1e6:7.2f} MB")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def train_tokenizer(corpus: Path, out: Path):
    from common import split_documents
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    docs = split_documents((corpus / "train.txt").read_text(encoding="utf-8"))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[EOS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS, model_max_length=1024
    )
    if out.exists():
        shutil.rmtree(out)
    tokenizer.save_pretrained(out)
    return tokenizer


def tokenize_splits(corpus: Path, tokenizer, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in SPLITS:
        text = (corpus / f"{split}.txt").read_text(encoding="utf-8")
        ids = token_stream(tokenizer, text)
        np.save(out / f"{split}.npy", ids)
        stats[split] = {"tokens": len(ids), "bytes_per_token": round(len(text.encode()) / len(ids), 3)}
        print(f"{split:15s} {len(ids):9d} tokens  {stats[split]['bytes_per_token']:.2f} bytes/token")
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "freeze", "check"], nargs="?", default="build")
    parser.add_argument("--docs-root", type=Path, default=DOCS_ROOT)
    parser.add_argument("--stdlib-root", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--build", type=Path, default=BUILD)
    args = parser.parse_args()
    corpus = args.build / "corpus"
    if args.command == "build":
        build_corpus(corpus, args.docs_root, args.stdlib_root)
        tokenizer = train_tokenizer(corpus, args.build / "tokenizer")
        tokenize_splits(corpus, tokenizer, args.build / "tokens")
    elif args.command == "freeze":
        HELDOUT.mkdir(exist_ok=True)
        manifest = json.loads((corpus / "manifest.json").read_text())
        for split, name in (("heldout_docs", "docs.txt"), ("heldout_stdlib", "stdlib.txt")):
            shutil.copyfile(corpus / f"{split}.txt", HELDOUT / name)
        (HELDOUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"copied held-out texts and manifest to {HELDOUT}")
    else:
        manifest = build_corpus(corpus, args.docs_root, args.stdlib_root)
        frozen = json.loads((HELDOUT / "manifest.json").read_text())
        ok = True
        for split in ("train", "valid", "heldout_docs", "heldout_stdlib"):
            same = manifest["splits"][split]["sha256"] == frozen["splits"][split]["sha256"]
            ok &= same
            print(f"{split:15s} {'identical' if same else 'DIFFERS'} to the committed manifest")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
