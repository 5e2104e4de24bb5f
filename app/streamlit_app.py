"""SAMI Workbench: the Streamlit entry file (navigation and the shared sidebar only).

    sami ui [--port 8501]            # or, from the project root: streamlit run app

(``streamlit run`` given a folder runs its ``streamlit_app.py``: this file.)

The app's rooms, each named by what it serves:

* ``app/views/<page>.py``: the pages, one file each; they only draw (a folder not named
  ``pages/``, so Streamlit's automatic multipage mode stays off: this file navigates);
* ``app/<page>.py``: what that page shows, as functions without Streamlit (tables,
  labels, checks), one module per page, named after it;
* ``app/formatting.py`` (durations, ages, ids, statuses, markdown escaping),
  ``app/charts.py`` (plotly figures), ``app/state.py`` (workspace, engine, cached reads)
  and ``app/sidebar.py``: what every page shares.

The app reads and writes the workspace database (``$SAMI_HOME``, or
``$SAMI_DATABASE_URL``) and never runs a job: workers (`sami worker`) do.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app` puts app/ (not the project root) on sys.path. Its modules are
# imported as app.<name> only (app/queue.py never stands for the standard library's
# queue: Streamlit has imported that before this file runs).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app import access, sidebar  # noqa: E402
from app.views import PAGES  # noqa: E402

st.set_page_config(page_title="SAMI Workbench", layout="wide")
access.guard()  # `sami ui`'s token and Host check: nothing of the workspace before it passes
navigation = st.navigation([st.Page(str(p.path), title=p.title, url_path=p.url_path, default=p.default)
                            for p in PAGES])
sidebar.draw()
navigation.run()
