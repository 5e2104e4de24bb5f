"""app.text.md_escape: text from elsewhere inside markdown elements renders as itself."""

from __future__ import annotations

import re

from app.text import md_escape


def test_markdown_and_html_specials_are_escaped():
    raw = "**bold** [x](javascript:alert(1)) <script>a</script> `code` # h"
    out = md_escape(raw)
    # every special character is preceded by a backslash; removing them gives the text back
    assert re.sub(r"\\(.)", r"\1", out) == raw
    for ch in "*[]()<>`#":
        assert all(out[i - 1] == "\\" for i, c in enumerate(out) if c == ch)


def test_plain_words_are_unchanged():
    assert md_escape("iteration 1 vs base") == "iteration 1 vs base"
