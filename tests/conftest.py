"""Fixtures shared by every test tier.

The whole session is offline: set before anything imports huggingface_hub (which reads
these variables once, at import), and inherited by the subprocesses tests start.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The offline demo model, built once into `default_demo_model_dir()`.

    A complete one already there (from an earlier run) is reused, so only the first
    session on a checkout pays for the build (1-3 minutes on 2 cores).
    """
    from sami_core.demo_model import ensure_demo_model

    return ensure_demo_model()
