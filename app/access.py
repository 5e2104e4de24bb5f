"""The app's side of `sami ui`'s access check (see services.ui_access)."""

from __future__ import annotations

import os

from services.ui_access import HOSTS_ENV, TOKEN_ENV, TOKEN_PARAM, refusal

_SESSION_KEY = "_sami_ui_access"


def guard() -> None:
    """Stop the script run (showing only a refusal) unless this session may see the app."""
    import streamlit as st

    expected = os.environ.get(TOKEN_ENV, "")
    if not expected and not os.environ.get(HOSTS_ENV):
        return
    headers = getattr(st.context, "headers", {}) or {}
    why = refusal(headers.get("Host"), st.query_params.get(TOKEN_PARAM),
                  bool(st.session_state.get(_SESSION_KEY)))
    if why is not None:
        st.title("SAMI Workbench")
        st.error(f"Access refused: {why}.")
        st.stop()
    st.session_state[_SESSION_KEY] = True
    if expected and st.query_params.get(TOKEN_PARAM) != expected:
        st.query_params[TOKEN_PARAM] = expected
