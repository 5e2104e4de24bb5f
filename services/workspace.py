"""The workspace (`sami init`): its folders, its database at the current schema, and the
embedded demo model that `model.path: demo` names."""

from __future__ import annotations

import subprocess
import sys

from services.errors import ServiceError


def build_demo_model() -> None:
    """Build the demo model (once per checkout; instant when it exists). sami_core runs as
    a subprocess: no front end imports the ML stack."""
    rc = subprocess.call([sys.executable, "-m", "sami_core", "make-demo-model"], stderr=subprocess.DEVNULL)
    if rc != 0:
        raise ServiceError("could not build the demo model: run `python -m sami_core make-demo-model` to see why")
