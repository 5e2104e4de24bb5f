"""Imports go one way (DESIGN.md "Layers"); checked on the source and on sys.modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "sami_core": {"db", "workers", "app", "streamlit"},
    "app": {"torch", "transformers", "datasets", "accelerate", "workers"},  # but see APP_MAY_USE
    "db": {"torch", "transformers", "datasets", "accelerate", "workers", "app", "streamlit", "sami_core"},
    "workers": {"torch", "transformers", "datasets", "accelerate", "app", "streamlit"},
}
# sami_core modules free of the ML stack, which the app and workers may import
# (sami_core.judge.stage: numpy only at import time; the openai client and the HF judge load lazily)
TORCH_FREE_CORE = {"sami_core.spec", "sami_core.pipeline", "sami_core.errors", "sami_core.constitutions",
                   "sami_core.judge.stage", "sami_core.prompts", "sami_core.rundir", "sami_core.stats", "sami_core.results",
                   "sami_core.data_files"}

# Torch-free workers modules that the app shares with the CLI: submitting an experiment
# (spec -> constitution version + job DAG) and judging's reads (win rate tables, exports).
APP_MAY_USE = {"workers.submit", "workers.judging"}


def top_level_imports(path: Path) -> set[tuple[str, str]]:
    """(top-level package, full module) of every import statement in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.module))
    return out


def test_source_imports_respect_layers():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for f in (ROOT / pkg).rglob("*.py"):
            for top, full in top_level_imports(f):
                if top in forbidden and not (pkg == "app" and full in APP_MAY_USE):
                    bad.append(f"{f.relative_to(ROOT)} imports {full}")
                if pkg in ("app", "workers") and top == "sami_core" and full not in TORCH_FREE_CORE | {"sami_core"}:
                    bad.append(f"{f.relative_to(ROOT)} imports {full} (only the torch-free sami_core modules)")
    assert bad == []


def test_checker_catches_a_violation(tmp_path: Path):
    f = tmp_path / "m.py"
    f.write_text("import torch.nn\nfrom db.queue import claim\nfrom . import x\n")
    assert top_level_imports(f) == {("torch", "torch.nn"), ("db", "db.queue")}


def test_torch_free_core_modules_pull_in_no_ml_stack():
    code = "import sys\n" + "".join(f"import {m}\n" for m in sorted(TORCH_FREE_CORE)) + (
        "print(' '.join(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_app_pulls_in_no_ml_stack_nor_the_daemon():
    code = ("import sys\nimport app.state, app.sidebar, app.views\n" + "".join(f"import {m}\n" for m in sorted(APP_MAY_USE))
            + "print(' '.join(m for m in ('torch', 'transformers', 'datasets', 'accelerate', 'workers.daemon',"
              " 'workers.launch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
