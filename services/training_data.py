"""Importing the SAMI paper's published training data as a finished generate output
(`sami import-training-data`), so that a train spec can name it (``data.path``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sami_core.paper_data import read_paper_file, write_generate_output
from services.errors import ServiceError

IMPORTED_DIR = "imported"  # under the workspace's runs folder


@dataclass
class ImportedData:
    run_dir: Path
    n_queries: int
    n_constitutions: int

    @property
    def data_path(self) -> Path:
        return self.run_dir / "data.jsonl"

    def as_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "data": str(self.data_path), "n_queries": self.n_queries,
                "n_constitutions": self.n_constitutions}


def import_training_data(path: str | Path, n: int, runs_dir: Path, name: str | None = None) -> ImportedData:
    """Check the paper's JSON file (N entries per example, distinct non-empty prompts,
    non-empty responses) and write it to ``runs_dir/imported/<name>`` (default: the file's
    stem); DataError (a SamiError) when the file is not of that shape, ServiceError when the
    directory is taken. Nothing is written when refused."""
    rows = read_paper_file(path, n)
    name = name or Path(path).stem
    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise ServiceError(f"--name {name!r}: use letters, digits, '.', '-' and '_' only")
    run_dir = Path(runs_dir) / IMPORTED_DIR / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ServiceError(f"{run_dir} already exists: give another --name")
    out = write_generate_output(rows, run_dir, source=Path(path).resolve())
    return ImportedData(run_dir, out["n_queries"], out["n_constitutions"])
