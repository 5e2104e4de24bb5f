"""Judging response sources against each other (`sami judge`, and the app's actions):
resolve the two sides, build and check the judge spec, then queue a judge job or run the
stage now (through the worker's launcher) and store its judgments.

Judge stages stay database-free: a judge job's spec names its two sides by a path (a
sample run directory, or a published results file) and by a name that is the response
source's label in the database (``label#id`` when a label is not unique);
db.ingest.ingest_judgments maps each judgment back to the two response rows it compared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from db import ingest, queue
from db.workspace import Workspace
from sami_core.contract import JUDGMENTS_FILE, OUTPUTS_FILE, RESPONSES_FILE
from sami_core.judge.cache import RequestEstimate
from sami_core.judge.stage import estimate_judge_job
from sami_core.experiment_spec import ExperimentLLMSpec, resolve_auto_judge
from sami_core.errors import SamiError
from sami_core.spec import JudgeSpec
from services import results, stages
from services.errors import JudgingError
from services.jobs import validate_job_spec

__all__ = ["JudgingError", "JudgePlan", "JudgeOptions", "source_side", "judge_side", "plan_judge", "estimate_queued",
           "queue_judge", "run_judge_now"]


def source_side(source: dict, workspace_home: Path) -> dict[str, Any]:
    """A judge spec's ``candidate``/``baseline`` entry for a response source row
    (db.ingest.find_source): where its responses are, and its label as the name."""
    if source["kind"] == "import":
        if not source.get("path"):
            raise JudgingError(f"response source {source['label']!r} has no file path")
        path = Path(source["path"])
    else:
        run_dir = source.get("job_run_dir")
        if not run_dir:
            raise JudgingError(f"response source {source['label']!r} has no sample run directory")
        path = Path(run_dir)
        path = path if path.is_absolute() else workspace_home / path
        path = path / RESPONSES_FILE
    if not path.exists():
        raise JudgingError(f"response source {source['label']!r}: {path} does not exist any more")
    return {"path": str(path), "name": f"{source['label']}#{source['id']}"}


def judge_side(conn: Connection, ref: str, experiment_id: int | None, home: Path) -> tuple[dict, dict | None]:
    """One side of a judgment named by the user: a response source (id, label, label#id),
    a published results file (imported first, idempotent), or any other file or run
    directory (judged, but not stored: the second value is None)."""
    p = Path(ref)
    src = None if p.suffix == ".json" and p.is_file() else ingest.find_source(conn, ref, experiment_id=experiment_id)
    if src is None:
        if p.suffix == ".json" and p.is_file():
            info = results.import_results_file(conn, p)
            src = ingest.find_source(conn, str(info["source_id"]))
        elif p.exists():
            return {"path": str(p.resolve())}, None
        else:
            raise JudgingError(f"{ref!r} is neither a response source (see `sami sources`) nor a file")
    return source_side(src, home), src


@dataclass
class JudgeOptions:
    """What `sami judge` asks for (its flags), before the sides are resolved."""

    candidate: str
    baseline: str
    provider: str = "openai"
    model: str = "gpt-4o"
    base_url: str | None = None
    azure_endpoint: str | None = None
    api_version: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 16
    max_attempts: int | None = None
    backoff_initial_s: float | None = None
    both_orders: bool = False
    limit: int | None = None
    temperature: float | None = None
    experiment_id: int | None = None
    template: str | None = None  # a shipped template name or a template file
    unparseable: str = "apart"  # apart | tie
    price_prompt_per_mtok: float | None = None  # USD per million tokens, for the cost estimate
    price_completion_per_mtok: float | None = None


@dataclass
class JudgePlan:
    """A checked judge job: its spec, what it will cost, and whether both sides are stored."""

    spec: dict[str, Any]
    estimate: RequestEstimate
    stored: bool
    notes: list[str] = field(default_factory=list)
    key_missing: bool = False  # requests to send, and the judge's key variable is not set here


def plan_judge(conn_tx: Callable[[Callable[[Connection], Any]], Any], ws: Workspace, opts: JudgeOptions,
               env: Mapping[str, str], *, require_key: bool = True) -> JudgePlan:
    """Resolve both sides (each in its own transaction, through ``conn_tx``), the judge
    (``provider: auto`` against ``env``), validate the spec and count the cached
    judgments. Refuses (JudgingError) when requests must be sent but the key is not set;
    with ``require_key=False`` that goes to the plan's notes (and ``key_missing``) instead,
    so that a form can show the counts before the key is there."""
    cand, cand_src = conn_tx(lambda c: judge_side(c, opts.candidate, opts.experiment_id, ws.home))
    base, base_src = conn_tx(lambda c: judge_side(c, opts.baseline, opts.experiment_id, ws.home))
    if opts.temperature is not None:
        cand["temperature"] = base["temperature"] = opts.temperature
    judge: dict[str, Any] = {"provider": opts.provider, "model": opts.model, "concurrency": opts.concurrency,
                             "api_key_env": opts.api_key_env or None}
    for key in ("base_url", "azure_endpoint", "api_version", "max_attempts", "backoff_initial_s",
                "price_prompt_per_mtok", "price_completion_per_mtok"):
        if getattr(opts, key) is not None:
            judge[key] = getattr(opts, key)
    notes = []
    if opts.provider == "auto":
        try:
            llm, note = resolve_auto_judge(ExperimentLLMSpec.model_validate(judge), env)
        except ValueError as err:  # pydantic's ValidationError
            raise JudgingError(f"--provider auto: {err}") from None
        judge = llm.model_dump(mode="json")
        notes += [note] if note else []
    spec = validate_job_spec("judge", {
        "judge": judge, "candidate": cand, "baseline": base, "order": "both" if opts.both_orders else "random",
        "limit": opts.limit, "shared_cache": str(ws.home / "judge-cache"), "template": opts.template,
        "unparseable": opts.unparseable})
    est = estimate_judge_job(JudgeSpec.model_validate(spec))
    key_env = judge["api_key_env"]
    missing = bool(est.to_send and key_env and judge["provider"] not in ("hf", "rule") and not env.get(key_env))
    if missing:
        why = f"${key_env} is not set (the judge's API key; --api-key-env names another variable, '' for none)"
        if require_key:
            raise JudgingError(why)
        notes.append(why)
    return JudgePlan(spec, est, cand_src is not None and base_src is not None, notes, key_missing=missing)


def estimate_queued(ws: Workspace, spec: Mapping[str, Any], run_dir: str | None = None) -> RequestEstimate | None:
    """What a judge job that has not run yet will send (the Queue page's "before
    sending"): judgments, cached ones, approximate tokens and cost at most. Paths in the
    spec are resolved against the workspace, as the worker runs it. None while a side's
    responses do not exist yet (its sample job has not run)."""
    data = json.loads(json.dumps(dict(spec)))
    for side in ("candidate", "baseline"):
        if isinstance(data.get(side), dict) and data[side].get("path"):
            data[side]["path"] = str(ws.resolve(data[side]["path"]))
    if data.get("shared_cache"):
        data["shared_cache"] = str(ws.resolve(data["shared_cache"]))
    try:
        return estimate_judge_job(JudgeSpec.model_validate(data), ws.resolve(run_dir) if run_dir else None)
    except (SamiError, ValueError, OSError):  # responses not there yet (DataError), or an old spec
        return None


def queue_judge(conn: Connection, plan: JudgePlan, *, experiment_id: int | None = None,
                run_dir: str | None = None) -> int:
    """Enqueue the planned judge job; its id. Both sides must be stored response sources."""
    if not plan.stored:
        raise JudgingError("a queued judge job compares response sources in the database (see `sami sources`, "
                           "`sami import-results`); judge other files with --now")
    return queue.enqueue(conn, "judge", plan.spec, name="judge", experiment_id=experiment_id, run_dir=run_dir)


@dataclass
class JudgeRun:
    outputs: dict[str, Any]
    stored: int  # judgments rows written
    run_dir: Path


def run_judge_now(conn_tx: Callable[[Callable[[Connection], Any]], Any], ws: Workspace, plan: JudgePlan, *,
                  experiment_id: int | None = None, run_dir: str | None = None,
                  on_progress: Callable[[dict[str, Any]], None] | None = None) -> JudgeRun:
    """Run the judge stage in the foreground (services.stages.run_now, the worker's
    launcher) and store its judgments when both sides are response sources."""
    target = Path(run_dir) if run_dir else ws.runs_dir / f"judge-{time.strftime('%Y%m%d-%H%M%S')}"
    target = target if target.is_absolute() else ws.home / target
    done = stages.run_now("judge", plan.spec, target, cwd=ws.home, on_progress=on_progress)
    if not done.ok:
        why = f": {done.reason}" if done.reason else "; see its messages above"
        raise JudgingError(f"the judge stage failed (exit {done.exit_code}){why}; run directory {target}")
    n = 0
    if plan.stored:
        try:
            n = conn_tx(lambda c: ingest.ingest_judgments(c, target / JUDGMENTS_FILE, plan.spec,
                                                          experiment_id=experiment_id))
        except ingest.IngestError as err:
            raise JudgingError(str(err)) from None
    return JudgeRun(json.loads((target / OUTPUTS_FILE).read_text()), n, target)
