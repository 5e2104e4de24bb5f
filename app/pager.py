"""The pager under a paged list (Responses, Generated data): rows per page, the page
number, Previous and Next. The page is kept in session state under ``PREFIX.page`` (a
page's own ``_first_page`` resets it when its filters change) and clamped to the pages
that exist, so a shrinking result never shows an empty page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st


def pager(prefix: str, total: int, sizes: Sequence[int], *, on_size_change: Callable[[], None]
          ) -> tuple[int, int, int, Any]:
    """Draw the pager for ``total`` rows; returns (page, page size, number of pages, the
    column left for the caller's caption)."""
    p1, p2, p3, p4, p5 = st.columns([1, 1, 0.6, 0.6, 3], vertical_alignment="bottom")
    page_size = p1.selectbox("Per page", sizes, index=1, key=f"{prefix}.page_size", on_change=on_size_change)
    n_pages = max(1, -(-total // page_size))
    key = f"{prefix}.page"
    st.session_state[key] = min(max(1, int(st.session_state.get(key, 1))), n_pages)

    def move(delta: int) -> None:
        st.session_state[key] = min(n_pages, max(1, st.session_state.get(key, 1) + delta))

    page = p2.number_input("Page", min_value=1, max_value=n_pages, step=1, key=key)
    p3.button("Previous", key=f"{prefix}.prev", on_click=move, args=(-1,), disabled=page <= 1)
    p4.button("Next", key=f"{prefix}.next", on_click=move, args=(1,), disabled=page >= n_pages)
    return page, page_size, n_pages, p5
