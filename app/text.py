"""Text from elsewhere (model outputs, judge answers, URL parameters, names users typed)
is shown with st.text / st.code / dataframes, which render nothing. Where such text must
sit inside a markdown element (a caption, a message), :func:`md_escape` it first."""

from __future__ import annotations

import re

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md_escape(text: object) -> str:
    """``text`` with every markdown/HTML special character backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", str(text))
