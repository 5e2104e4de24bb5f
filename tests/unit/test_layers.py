"""Imports go one way (docs/design.md, "Layers"), checked on the source and on sys.modules,
with no exception list:

    app, cli   -> services, db, torch-free sami_core
    services   -> db, torch-free sami_core
    workers    -> db, the stage contract (sami_core.contract, sami_core.launch), tracking;
                  stages run as subprocesses
    tracking   -> db, sami_core.contract (mlflow, wandb imported lazily); the services and the
                  worker call it
    db         -> sqlalchemy, alembic (tests/unit/test_queue_layers.py)
    sami_core  -> the ML stack; never db, services, cli, workers, app, streamlit
    nothing    -> app or cli
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML_STACK = {"torch", "transformers", "datasets", "accelerate"}
PACKAGES = ("sami_core", "db", "services", "cli", "workers", "app", "tracking")

# What each package may never import (top-level names). Every package is listed; none has
# an exception.
FORBIDDEN = {
    "sami_core": {"db", "services", "cli", "workers", "app", "streamlit", "tracking"},
    "db": ML_STACK | {"services", "cli", "workers", "app", "streamlit", "sami_core", "tracking"},
    "services": ML_STACK | {"cli", "workers", "app", "streamlit"},
    "cli": ML_STACK | {"workers", "app", "streamlit"},
    "workers": ML_STACK | {"services", "cli", "app", "streamlit"},
    "app": ML_STACK | {"cli", "workers"},
    "tracking": ML_STACK | {"services", "cli", "workers", "app", "streamlit"},
}
# The stage contract: the only sami_core modules the daemon imports.
WORKER_CORE = {"sami_core.contract", "sami_core.launch"}


def _is_project_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(path: Path) -> set[tuple[str, str]]:
    """(top-level package, full module) of every absolute import statement in a file,
    at any depth (imports inside functions count). ``from pkg import mod`` counts as
    ``pkg.mod`` when that is one of the project's modules."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            subs = {f"{node.module}.{a.name}" for a in node.names if _is_project_module(f"{node.module}.{a.name}")}
            out |= {(top, m) for m in subs} if len(subs) == len(node.names) else {(top, node.module)} | {
                (top, m) for m in subs}
    return out


def package_imports(pkg: str) -> dict[Path, set[tuple[str, str]]]:
    return {f: imports_of(f) for f in sorted((ROOT / pkg).rglob("*.py"))}


def core_modules_used_by(*pkgs: str) -> set[str]:
    """The sami_core modules (and sami_core itself) imported anywhere in ``pkgs``."""
    return {full for pkg in pkgs for found in package_imports(pkg).values() for top, full in found
            if top == "sami_core"}


def loaded_after_import(modules: set[str]) -> set[str]:
    """sys.modules of a fresh interpreter after importing ``modules``."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in sorted(modules)) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_source_imports_respect_layers() -> None:
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for f, found in package_imports(pkg).items():
            for top, full in found:
                if top in forbidden:
                    bad.append(f"{f.relative_to(ROOT)} imports {full}")
                if pkg == "tracking" and top == "sami_core" and full != "sami_core.contract":
                    bad.append(f"{f.relative_to(ROOT)} imports {full} (the worker calls tracking; it may import "
                               "only sami_core.contract)")
                if pkg == "workers" and top == "sami_core" and full not in WORKER_CORE:
                    bad.append(f"{f.relative_to(ROOT)} imports {full} (workers run stages as subprocesses; "
                               f"they import only {sorted(WORKER_CORE)})")
    assert bad == []


def test_nothing_imports_the_front_ends() -> None:
    bad = [f"{f.relative_to(ROOT)} imports {full}" for pkg in PACKAGES for f, found in package_imports(pkg).items()
           for top, full in found if top in {"app", "cli"} - {pkg}]
    assert bad == []


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import torch.nn\nfrom db.queue import claim\nfrom . import x\ndef f():\n    import workers.daemon\n"
                 "from sami_core import contract, launch\n")
    assert imports_of(f) == {("torch", "torch.nn"), ("db", "db.queue"), ("workers", "workers.daemon"),
                             ("sami_core", "sami_core.contract"), ("sami_core", "sami_core.launch")}


def test_the_sami_core_modules_front_ends_use_pull_in_no_ml_stack() -> None:
    """Every sami_core module that app, cli, services or workers import is torch-free: found
    from their source, then imported in a fresh interpreter."""
    used = core_modules_used_by("app", "cli", "services", "workers")
    assert "sami_core.spec" in used and "sami_core.contract" in used  # the scan found them
    assert not (loaded_after_import(used) & ML_STACK)


def test_front_ends_and_services_pull_in_no_ml_stack_nor_the_daemon() -> None:
    modules = {f"{pkg}.{'.'.join(f.relative_to(ROOT / pkg).with_suffix('').parts)}".removesuffix(".__init__")
               for pkg in ("services", "cli") for f in (ROOT / pkg).rglob("*.py") if f.name != "__main__.py"}
    modules |= {"app.state", "app.sidebar", "app.views"}
    loaded = loaded_after_import(modules)
    assert not (loaded & (ML_STACK | {"workers", "workers.daemon", "mlflow", "wandb"}))
    assert {"services.experiments", "cli.main"} <= loaded


def test_the_daemon_pulls_in_no_ml_stack_nor_the_services() -> None:
    loaded = loaded_after_import({"workers.daemon", "workers.relay", "workers.diag", "workers.__main__"})
    assert not (loaded & (ML_STACK | {"services", "cli", "app", "mlflow", "wandb"}))  # trackers: only when asked
    assert "tracking.mirror" in loaded
    assert {m for m in loaded if m.startswith("sami_core.")} <= WORKER_CORE | {"sami_core.errors"}
