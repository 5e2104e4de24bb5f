"""app.formatting: durations, ids, statuses, and text from elsewhere inside markdown
elements rendered as itself (md_escape)."""

from __future__ import annotations

import re

from datetime import datetime, timedelta, timezone

from app.formatting import display_status, format_duration, format_time, md_escape, parse_id


def test_markdown_and_html_specials_are_escaped():
    raw = "**bold** [x](javascript:alert(1)) <script>a</script> `code` # h"
    out = md_escape(raw)
    # every special character is preceded by a backslash; removing them gives the text back
    assert re.sub(r"\\(.)", r"\1", out) == raw
    for ch in "*[]()<>`#":
        assert all(out[i - 1] == "\\" for i, c in enumerate(out) if c == ch)


def test_plain_words_are_unchanged():
    assert md_escape("iteration 1 vs base") == "iteration 1 vs base"


def test_format_duration():
    assert [format_duration(s) for s in (None, 0, 59.4, 61, 3600 + 125, 90000)] == \
        ["-", "0s", "59s", "1m 1s", "1h 2m", "1d 1h"]


def test_parse_id():
    assert [parse_id(v) for v in ("12", " 3 ", "0", "-1", "x", None, "1.5")] == [12, 3, None, None, None, None, None]


def test_a_running_job_being_cancelled_shows_as_cancelling():
    assert display_status("running", cancel_requested_at="2026-01-01") == "cancelling"
    assert display_status("running") == "running" and display_status("queued", "2026-01-01") == "queued"


def test_format_time_writes_utc():
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(t) == "2026-01-02 01:04:05 UTC" and format_time(None) == "-"
