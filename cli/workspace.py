"""``sami init`` (the workspace) and ``sami ui`` (the app in the browser)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli.registry import CliError, command, engine, integer, workspace
from db.migrations import current_revision
from db.workspace import redacted_url
from services import ui_access as access
from services.workspace import build_demo_model

# The app's entry file (app/ is installed next to cli/; the CLI never imports it):
# `streamlit run app` finds the same file.
APP_ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
MAX_UPLOAD_MB = 20  # as app.state.MAX_UPLOAD_MB and .streamlit/config.toml


def _configure_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-demo-model", action="store_true",
                   help="do not build the embedded demo model (built once per checkout, about half a minute; "
                        "`model.path: demo` needs it)")


@command("init", "create the workspace ($SAMI_HOME or ./.sami): database, runs folder, demo model",
         _configure_init)
def cmd_init(args: argparse.Namespace) -> int:
    ws = workspace(create=True)
    print(f"workspace: {ws.home}")
    print(f"database:  {redacted_url(ws.database_url)} (schema {current_revision(engine())})")
    print(f"runs:      {ws.runs_dir}", flush=True)
    if not args.no_demo_model:
        build_demo_model()
    return 0


def _configure_ui(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=integer(1, 65535), default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the app has no login, so "
                        "reach it from elsewhere through an SSH tunnel rather than binding 0.0.0.0)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without the per-start access token (trusted single-user machines only); "
                        "the Host check stays")
    p.add_argument("--with-worker", action="store_true",
                   help="also run one local `sami worker` (log: $SAMI_HOME/worker.log), stopped with the UI")


@command("ui", "serve the workbench in the browser (Streamlit) on 127.0.0.1", _configure_ui)
def cmd_ui(args: argparse.Namespace) -> int:
    if not APP_ENTRY.is_file():
        raise CliError(f"the app's entry file {APP_ENTRY} is missing: reinstall the project (`make install`)")
    ws = workspace(create=True)
    engine()  # migrate before the first page renders
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_ENTRY),
           "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
           "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "SAMI_HOME": str(ws.home)}
    token = "" if args.no_token else (os.environ.get(access.TOKEN_ENV) or secrets.token_urlsafe(18))
    env[access.TOKEN_ENV] = token
    # The host names the app answers to (a DNS-rebinding page names another); an address
    # bound on every interface has names we cannot know: the token alone guards it then.
    wildcard = args.host in ("0.0.0.0", "::", "")
    env[access.HOSTS_ENV] = "" if wildcard else ",".join(dict.fromkeys(
        [args.host.strip("[]").lower(), "127.0.0.1", "localhost", "::1"]))
    url = f"http://{args.host}:{args.port}/" + (f"?{access.TOKEN_PARAM}={token}" if token else "")
    children: list[subprocess.Popen] = []

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a service manager, `kill`) stops the UI and its worker like Ctrl-C does.
    signal.signal(signal.SIGTERM, stop)
    try:
        if args.with_worker:
            log_path = ws.home / "worker.log"
            with open(log_path, "ab") as log:
                children.append(subprocess.Popen([sys.executable, "-m", "workers"], env=env,
                                                 stdout=log, stderr=subprocess.STDOUT))
            print(f"worker: pid {children[-1].pid} (log {log_path}; stops with the UI)", flush=True)
        print(f"SAMI Workbench: {url}  (workspace {ws.home}; Ctrl-C stops it)", flush=True)
        children.append(subprocess.Popen(cmd, env=env))
        return children[-1].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # The worker hands a running job back to the queue on SIGTERM (another worker or
        # the next `make run` takes it over); the UI holds no state.
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
