"""Run directories: where a stage writes everything, so it can be resumed or inspected.

Layout (all stages):
    spec.json       the validated spec (defaults filled in) and its fingerprint
    progress.json   {"stage", "status", "done", "total", "unit", "message", "updated_at"}
    metrics.jsonl   one JSON object per line (training: one per optimizer step)
    outputs.json    written last, on success: what the stage produced

A run directory belongs to one spec: running a stage again with the same spec resumes,
with a different one it refuses (naming the keys that differ), unless the earlier attempt
failed before producing anything (a stage that refused its spec, data or model): then the
new spec starts afresh there, so the same command with the spec fixed just runs. Files
are replaced atomically (write to a temporary file, then rename), so a crash never leaves
half a file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sami_core.contract import (CALLER_FILES, EXIT_STATUS_FILE, METRICS_FILE, OUTPUTS_FILE, PROGRESS_FILE,
                                SPEC_FILE)
from sami_core.errors import RunDirError
from sami_core.spec import spec_fingerprint


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")




def record_exit(run_dir: str | Path, code: int, reason: str) -> None:
    """Write RUN_DIR/exit_status.json = {"code", "reason", "rank"} atomically. Any rank
    may write it (ranks that refuse the same input write the same code); best effort."""
    try:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / EXIT_STATUS_FILE,
                          {"code": code, "reason": reason[:2000], "rank": int(os.environ.get("RANK", "0"))})
    except OSError:
        pass  # the process's exit code still tells a single-process stage's caller


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class RunDir:
    def __init__(self, path: str | Path, *, is_writer: bool = True):
        self.path = Path(path)
        self.is_writer = is_writer  # only rank 0 writes under torchrun
        self._eta_start: tuple[float, int] | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---- ownership -------------------------------------------------------------------
    def open(self, stage: str, spec: BaseModel) -> bool:
        """Claim the directory for (stage, spec). Returns True when resuming a previous run."""
        fp = spec_fingerprint(spec)
        spec_file = self.path / SPEC_FILE
        dumped = spec.model_dump(mode="json")
        if spec_file.exists():
            try:
                old = json.loads(spec_file.read_text())
            except json.JSONDecodeError:
                raise RunDirError(f"{spec_file} is corrupt; move the run directory away to start over") from None
            if (old.get("stage") != stage or old.get("fingerprint") != fp) and self._failed_empty():
                # The attempt that made it refused its input (or failed) before producing
                # anything: nothing of it can mix with this run, so this spec starts afresh.
                print(f"[sami] {stage}: {self.path} holds only a failed attempt of another spec, which "
                      "produced nothing; starting afresh with this one", file=sys.stderr, flush=True)
                if self.is_writer:
                    for name in (PROGRESS_FILE, EXIT_STATUS_FILE):
                        (self.path / name).unlink(missing_ok=True)
                    atomic_write_json(spec_file, {"stage": stage, "fingerprint": fp, "spec": dumped})
                return False
            if old.get("stage") != stage or old.get("fingerprint") != fp:
                if old.get("stage") != stage:
                    why = f"it belongs to stage {old.get('stage')!r}, not {stage!r}"
                else:
                    keys = _diff_keys(old.get("spec", {}), dumped)
                    why = "its spec differs in: " + ", ".join(keys or ["(unknown keys)"])
                raise RunDirError(
                    f"run directory {self.path} was made by another spec ({why}); "
                    "use a new --run-dir, or the original spec to resume"
                )
            return True
        # The caller's files, and the exit record of an attempt that refused its spec before
        # starting (it wrote nothing else), do not make a directory another run's.
        ignored = (*CALLER_FILES, EXIT_STATUS_FILE)
        if self.path.exists() and any(p for p in self.path.iterdir() if not p.name.startswith(".") and p.name not in ignored):
            raise RunDirError(f"run directory {self.path} is not empty and has no spec.json; choose an empty or new directory")
        if self.is_writer:
            atomic_write_json(spec_file, {"stage": stage, "fingerprint": fp, "spec": dumped})
        return False

    def _failed_empty(self) -> bool:
        """Whether the directory holds only what a failed attempt writes before any output
        (its spec.json, a progress.json that says failed, its exit record, the caller's files)."""
        allowed = {SPEC_FILE, PROGRESS_FILE, EXIT_STATUS_FILE, *CALLER_FILES}
        if any(p.name not in allowed for p in self.path.iterdir() if not p.name.startswith(".")):
            return False
        try:
            progress = json.loads((self.path / PROGRESS_FILE).read_text())
        except FileNotFoundError:
            progress = None
        except (OSError, ValueError):
            return False
        if progress is None:  # no progress yet: failed only when it left its exit record
            return (self.path / EXIT_STATUS_FILE).exists()
        return isinstance(progress, dict) and progress.get("status") == "failed" and not progress.get("done")

    def open_or_done(self, stage: str, spec: BaseModel) -> dict | None:
        """Claim the directory; if the stage already finished here, return its outputs."""
        if self.open(stage, spec) and (done := self.outputs()) is not None:
            print(f"[sami] {stage}: {self.path} is already complete", file=sys.stderr, flush=True)
            return done
        return None

    # ---- progress and metrics --------------------------------------------------------
    def progress(self, stage: str, done: int, total: int, unit: str, message: str = "", status: str = "running") -> None:
        if not self.is_writer:
            return
        now = time.time()
        if self._eta_start is None or done < self._eta_start[1]:
            self._eta_start = (now, done)
        t0, d0 = self._eta_start
        eta = (now - t0) / (done - d0) * (total - done) if done > d0 and total else None
        atomic_write_json(
            self.path / PROGRESS_FILE,
            {"stage": stage, "status": status, "done": done, "total": total, "unit": unit,
             "message": message, "eta_s": None if eta is None else round(eta, 1), "updated_at": now},
        )

    def append_metrics(self, record: dict) -> None:
        if not self.is_writer:
            return
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        """The good records of metrics.jsonl: JSON objects with a step >= 0. A line cut by a
        crash or not written by us (not UTF-8, not JSON) is skipped; later lines are kept."""
        p = self.path / METRICS_FILE
        if not p.exists():
            return []
        out = []
        for line in p.read_bytes().splitlines():
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError:  # a line cut by a crash, or not ours: skipped, the rest kept
                continue
            step = rec.get("step") if isinstance(rec, dict) else None
            if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
                out.append(rec)
        return out

    def write_outputs(self, outputs: dict) -> None:
        if self.is_writer:
            atomic_write_json(self.path / OUTPUTS_FILE, outputs)

    def outputs(self) -> dict | None:
        p = self.path / OUTPUTS_FILE
        return json.loads(p.read_text()) if p.exists() else None


class JsonlWriter:
    """Append-only JSONL with resume: `done_keys()` lists keys of complete lines.

    A line cut by a crash is dropped on open, so the file is always whole lines.
    """

    def __init__(self, path: Path, key: str):
        self.path = path
        self.key = key
        self._done: set = set()
        if path.exists():
            good, lines = 0, path.read_bytes().split(b"\n")
            for raw in lines:
                if not raw:
                    continue
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self._done.add(self._key_of(rec))
                good += len(raw) + 1
            with open(path, "r+b") as f:
                f.truncate(good)

    def _key_of(self, rec: dict):
        v = rec[self.key]
        return tuple(v) if isinstance(v, list) else v

    def done_keys(self) -> set:
        return set(self._done)

    def write(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._done.add(self._key_of(rec))
