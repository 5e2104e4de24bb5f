"""Layer rules for db/ and workers/ (docs/design.md): no ML stack; db/ imports only
SQLAlchemy, Alembic and the standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(*modules: str) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_workers_and_db_do_not_import_the_ml_stack() -> None:
    mods = imported_modules("workers.daemon", "workers.relay", "workers.diag", "sami_core.launch",
                            "sami_core.contract", "db.queue", "db.ingest", "db.migrations")
    for heavy in ("torch", "transformers", "datasets", "accelerate", "openai", "pydantic", "sami_core.spec"):
        assert heavy not in mods, f"{heavy} imported"


def test_db_imports_only_sqlalchemy_alembic_and_stdlib() -> None:
    from importlib.metadata import packages_distributions

    mods = imported_modules("db.models", "db.engine", "db.queue", "db.ingest", "db.workspace", "db.migrations",
                            "db.reads.jobs", "db.experiments")
    assert not any(m.split(".")[0] in ("workers", "services", "cli", "app", "sami_core") for m in mods)
    dists = packages_distributions()  # top-level module -> installed distributions
    # the project's own db package maps to this project's distribution when installed
    used = {d for m in mods if m.split(".")[0] != "db" for d in dists.get(m.split(".")[0], ())}
    allowed = {"SQLAlchemy", "sqlalchemy", "alembic", "typing_extensions", "greenlet", "setuptools"}
    assert used <= allowed, used - allowed
