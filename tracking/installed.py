"""Whether a tracker's client library can be imported here (checked at submit, without importing it)."""

from __future__ import annotations

import importlib.util

# tracker name (the key under ``tracking:`` in a spec) -> the module its client is
MODULES = {"mlflow": "mlflow", "wandb": "wandb"}


def install_problem(tracker: str, module: str | None = None) -> str | None:
    """None when ``module`` (default: the tracker's own) is importable in this environment,
    else why not and the fix (the pip extra). Finds the module without importing it."""
    module = module or MODULES.get(tracker, tracker)
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        found = False
    if found:
        return None
    return (f"{tracker} is not installed here (no module {module!r}); pip install 'sami-workbench[{tracker}]' "
            f"(on this machine and on every worker), or remove tracking.{tracker}")
