"""AppTest of the workbench's entry file, for the app tests and benchmarks/app.py.

Streamlit's server scans the installed distributions for v2 components once, when it
starts; an AppTest scans them again in each new instance (``_bidi_component_manager`` is
per instance), which costs 0.5-2.5 s with a few hundred packages installed and would be
counted as page time. :func:`app_test` hands every AppTest of this process the registry
of the first one, as the server does for its pages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

ENTRY = Path(__file__).resolve().parent / "streamlit_app.py"
_components: dict[str, Any] = {}  # the registry the first AppTest built


class _SharedComponents(AppTest):
    def _run(self, *args: Any, **kwargs: Any) -> AppTest:
        if getattr(self, "_bidi_component_manager", None) is None and "registry" in _components:
            self._bidi_component_manager = _components["registry"]
        try:
            return super()._run(*args, **kwargs)
        finally:
            if getattr(self, "_bidi_component_manager", None) is not None:
                _components.setdefault("registry", self._bidi_component_manager)


def scan_components() -> float:
    """Build the component registry now, as the server does at start (seconds taken; 0
    when built already or when this Streamlit has no such registry)."""
    if "registry" in _components:
        return 0.0
    try:
        from streamlit.components.v2.component_manager import BidiComponentManager
    except ImportError:
        return 0.0
    t0 = time.perf_counter()
    registry = BidiComponentManager()
    registry.discover_and_register_components(start_file_watching=False)
    _components["registry"] = registry
    return time.perf_counter() - t0


def app_test(timeout: float = 60) -> AppTest:
    """An AppTest of app/streamlit_app.py (not run yet)."""
    return _SharedComponents(str(ENTRY), default_timeout=timeout)
