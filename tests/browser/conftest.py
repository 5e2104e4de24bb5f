"""The browser tier: the real app in headless Debian Chromium, driven by Selenium.

``workbench`` (one per module) is a temporary workspace with the shipped published
responses imported, one local worker (`sami worker`) and the UI (`sami ui`) on a free
port, each in its own process group that teardown kills. ``browser`` is a headless
Chromium whose downloads land in a temporary folder.

Selenium never downloads anything here: the driver and the browser are Debian's
(/usr/bin/chromedriver, /usr/bin/chromium; `.ci/run` installs them). Without them the
tier is skipped with the reason.

Screenshots of every page go to test-artifacts/browser/<page>.png (git-ignored).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from db.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("SAMI_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SAMI_CHROMEDRIVER", "/usr/bin/chromedriver"))

# Generous: the UI's first start compiles nothing but imports streamlit, pandas and plotly
# on a small shared machine.
UI_START_TIMEOUT_S = 120


def _missing_browser() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver; "
                ".ci/run installs them)")
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m cli ARGS`` in its own process group (so teardown can kill its tree)."""
    out = open(log, "wb")  # noqa: SIM115 (closed at teardown via the process)
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (stage children) of the group
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def sami_cli(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"sami {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Workbench:
    home: Path
    url: str
    env: dict[str, str]
    token: str
    logs: dict[str, Path]

    def engine(self):  # noqa: ANN201
        from db.engine import open_database
        from db.workspace import Workspace

        return open_database(Workspace(self.home).database_url)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs[name]
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="module")
def workbench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workbench]:
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("browser")
    home = base / "ws"
    # `sami ui` takes its access token from here (else it draws one and prints it).
    env = {**os.environ, "SAMI_HOME": str(home), "PYTHONUNBUFFERED": "1", "SAMI_UI_TOKEN": "browser-test-token"}
    # The demo's judge is "auto": without API keys it is the local judge (no network).
    for var in ("SAMI_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY",
                "AZURE_OPENAI_ENDPOINT"):
        env.pop(var, None)
    sami_cli(["init"], env, timeout=900)  # builds the demo model into .cache once per checkout
    sami_cli(["import-results", "--shipped"], env, timeout=300)
    port = free_port()
    logs = {"worker": base / "worker.log", "ui": base / "ui.log"}
    worker = _start(["worker", "--poll-interval", "0.5"], env, logs["worker"])
    ui = _start(["ui", "--port", str(port)], env, logs["ui"])
    bench = Workbench(home=home, url=f"http://127.0.0.1:{port}", env=env, token=env["SAMI_UI_TOKEN"], logs=logs)
    try:
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{bench.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if ui.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the UI did not start:\n{bench.log_tail('ui')}")
            time.sleep(0.5)
        assert worker.poll() is None, f"the worker exited:\n{bench.log_tail('worker')}"
        yield bench
    finally:
        _stop(ui)
        _stop(worker)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """Keep each phase's report on the test item (the browser fixture screenshots failures)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,1000",
                 # a DNS-rebinding page: a foreign host name that resolves to this machine
                 "--host-resolver-rules=MAP attacker.example 127.0.0.1"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False,
    })
    # An explicit driver path: selenium-manager (which would download one) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    driver.downloads = downloads  # where this browser's downloads land
    try:
        # Headless Chromium: allow downloads into the folder explicitly (CDP).
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
    except Exception:  # noqa: BLE001 (older drivers: the prefs above are enough)
        pass
    try:
        yield driver
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:  # what the page showed when the test failed
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / f"failed-{request.node.name}.png"))
    finally:
        driver.quit()


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def _shot(driver: Any, page: str) -> Path:
        path = ARTIFACTS / f"{page}.png"
        driver.save_screenshot(str(path))
        return path

    return _shot
