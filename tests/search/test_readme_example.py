"""The README's library example runs as written, and the front door stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _library_example() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- library-example -->\n```python\n(.*?)```\n<!-- /library-example -->", readme, re.S)
    assert match is not None, "README.md lost its library example (between the library-example markers)"
    return match.group(1)


def test_the_readme_library_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _library_example()
    assert len(code.strip().splitlines()) <= 12, "the README promises a short example"
    # Run from a scratch folder that sees the repository's models, so the export lands in tmp_path.
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)

    result, best, model = namespace["result"], namespace["best"], namespace["model"]
    assert best is result.best and best.verified is not None
    assert abs(best.param_ratio - 0.6) <= 0.01 * 0.6
    assert sum(p.numel() for p in model.parameters()) == best.param_count
    assert (tmp_path / "pruned-7m" / "config.json").is_file()
    assert str(best.trial_number) in capsys.readouterr().out


def test_the_front_door_imports_without_torch() -> None:
    probe = (
        "import sys, search\n"
        "assert sorted(search.__all__) == sorted(dir(search))\n"
        "from search.results import BestEntry, SearchResult, TrialInfo\n"
        "assert 'torch' not in sys.modules and 'optuna' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT)
