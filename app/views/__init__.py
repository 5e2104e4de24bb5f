"""The workbench's pages, in navigation order (a folder not named ``pages/``, so that
Streamlit's automatic multipage mode stays off: ``app/streamlit_app.py`` navigates).
Each page's logic, without Streamlit, is in ``app/<page>.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PageInfo:
    file: str
    title: str
    url_path: str  # the file's stem: AppTest.switch_page and deep links (/queue?experiment=3) find it so
    default: bool = False

    @property
    def path(self) -> Path:
        return _HERE / self.file


PAGES = (
    PageInfo("overview.py", "Overview", "overview", default=True),
    PageInfo("experiments.py", "Experiments", "experiments"),
    PageInfo("constitutions.py", "Constitutions", "constitutions"),
    PageInfo("new_experiment.py", "New experiment", "new_experiment"),
    PageInfo("queue.py", "Queue", "queue"),
    PageInfo("training.py", "Training", "training"),
    PageInfo("generated.py", "Generated data", "generated"),
    PageInfo("responses.py", "Responses", "responses"),
    PageInfo("winrates.py", "Win rates", "winrates"),
)
