"""Untrusted text (posts, prompts, model outputs) on a page: literal text, or while a
search is typed, fully escaped HTML with the matches marked; a long post folded."""

from __future__ import annotations

import streamlit as st

from app import responses
from app.formatting import md_escape


def show_text(text: str, needle: str | None) -> None:
    if needle and needle.strip():
        st.html(responses.highlight_html(text, needle))
    else:
        st.text(text)


def show_post(post: str, needle: str | None) -> None:
    """The query's post: folded under its first words when long (the responses stay in view)."""
    if responses.is_long_post(post):
        with st.expander(md_escape(responses.post_title(post))):
            show_text(post, needle)
    else:
        show_text(post, needle)
