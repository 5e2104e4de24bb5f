"""How every page writes times, ids, statuses and text from elsewhere (pure functions, no
Streamlit).

Text from elsewhere (model outputs, judge answers, URL parameters, names users typed)
is shown with st.text / st.code / dataframes, which render nothing. Where such text must
sit inside a markdown element (a caption, a message), :func:`md_escape` it first.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md_escape(text: object) -> str:
    """``text`` with every markdown/HTML special character backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", str(text))


# --- times -----------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(timezone.utc)


def age_s(ts: datetime | None, now: datetime) -> float | None:
    """Seconds from ``ts`` to ``now``; None when ``ts`` is None."""
    return None if ts is None else (now - ts).total_seconds()


def format_duration(seconds: float | None) -> str:
    """``45s``, ``12m 5s``, ``3h 20m``, ``2d 4h``; ``-`` for None."""
    if seconds is None or seconds != seconds:
        return "-"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def format_time(ts: datetime | None) -> str:
    """``2026-01-01 12:00:05 UTC``; ``-`` for None."""
    if ts is None:
        return "-"
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc)
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- ids and statuses ------------------------------------------------------------------------


def parse_id(value: Any) -> int | None:
    """A query parameter as a positive job/experiment id, else None."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def display_status(status: str, cancel_requested_at: Any = None) -> str:
    """A running job whose cancellation was requested shows as ``cancelling`` (as in `sami jobs`)."""
    return "cancelling" if status == "running" and cancel_requested_at is not None else status
