"""Who may see the workbench: the per-start token and the Host check of `sami ui`
(the app's `app.access.guard` applies them; the CLI sets them).

The app has no login, so `sami ui` protects it the way notebook servers do: it starts
Streamlit with a random token (``SAMI_UI_TOKEN``) that it prints in the URL, and with the
host names the server answers to (``SAMI_UI_HOSTS``: the bound address and loopback
names). A page whose ``Host`` header names another host (a DNS-rebinding page on
``attacker.example`` resolving to 127.0.0.1) or that never presented the token shows a
refusal and nothing of the workspace. A browser session that presented the token once
keeps access (the token is put back into its URL so that a reload works). Without the
variables (``streamlit run app``, the app tests) there is no check.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

TOKEN_ENV = "SAMI_UI_TOKEN"
HOSTS_ENV = "SAMI_UI_HOSTS"
TOKEN_PARAM = "token"


def host_name(host_header: str | None) -> str:
    """The host name of a ``Host`` header, without its port, lower case."""
    host = (host_header or "").strip().lower()
    if host.startswith("["):  # [::1]:8501
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(host_header: str | None, token: str | None, session_ok: bool,
            env: Mapping[str, str] | None = None) -> str | None:
    """Why this request may not see the workbench, or None when it may."""
    env = os.environ if env is None else env
    hosts = [h.strip().lower() for h in env.get(HOSTS_ENV, "").split(",") if h.strip()]
    if hosts and host_name(host_header) not in hosts:
        return (f"this workbench answers at {', '.join(hosts)}, not at {host_name(host_header) or '(no host)'}: "
                "open the address `sami ui` printed")
    expected = env.get(TOKEN_ENV, "")
    if expected and not session_ok and not hmac.compare_digest((token or "").encode(), expected.encode()):
        return "open the address `sami ui` printed, with its ?token=… (a new token at every start)"
    return None
