"""Constitutions drafted by a model (the Constitutions page's "Draft with a model"): a
``write_constitution`` job is queued like any other, a worker runs it, and its draft is
read back from the job's run directory to be edited and saved as a version.

The writer is chosen as a judge is (an OpenAI-compatible endpoint or Azure OpenAI: a
provider, a model, a base URL or endpoint); its key is read by the worker from the
environment variable ``api_key_env`` names, never stored. The draft is a proposal: it
becomes a constitution version only when the user saves it (db.experiments.constitution_version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from db import queue
from db.workspace import Workspace, default_run_dir
from sami_core import constitutions
from sami_core.contract import CONSTITUTION_FILE
from sami_core.errors import ConstitutionError, SpecError
from sami_core.spec import validate_spec

KIND = "write_constitution"
WRITER_PROVIDERS = ("openai", "azure")  # those that can write (hf and rule can only judge)

__all__ = ["KIND", "WRITER_PROVIDERS", "DraftRequest", "DraftPlan", "Draft", "plan_draft", "queue_draft",
           "draft_state"]


@dataclass
class DraftRequest:
    """What the user asks for: the writer (as for judges), the task, how many principles."""

    task_description: str
    n_principles: int = 4
    provider: str = "openai"
    model: str = "gpt-4o"
    base_url: str | None = None
    azure_endpoint: str | None = None
    api_version: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    name: str | None = None


@dataclass
class DraftPlan:
    """A checked write_constitution spec (defaults filled in) and notes for the user."""

    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def plan_draft(req: DraftRequest, env: Mapping[str, str]) -> DraftPlan:
    """The job's spec, validated (SpecError with ``writer.*`` / ``task_description`` /
    ``n_principles`` field paths and every problem at once)."""
    errors: list[tuple[str, str]] = []
    if req.provider not in WRITER_PROVIDERS:
        errors.append(("writer.provider", f"{req.provider!r} can only judge; a writer is reached through "
                                          f"{' or '.join(WRITER_PROVIDERS)}"))
    writer: dict[str, Any] = {"provider": req.provider, "model": (req.model or "").strip(),
                              "api_key_env": (req.api_key_env or "").strip() or None,
                              "temperature": 0.7, "max_tokens": 1024}
    for key in ("base_url", "azure_endpoint", "api_version"):
        if (value := (getattr(req, key) or "").strip()):
            writer[key] = value
    data = {"writer": writer, "task_description": (req.task_description or "").strip(),
            "n_principles": req.n_principles, "name": (req.name or "").strip() or None}
    if not writer["model"]:
        errors.append(("writer.model", "name the writer's model (the deployment name on Azure), e.g. gpt-4o"))
    if not data["task_description"]:
        errors.append(("task_description", "say what the model should do, e.g. 'summarise Reddit posts'"))
    try:
        spec = validate_spec(KIND, data, source="draft").model_dump(mode="json")
    except SpecError as err:  # the schema's errors, except about a field already refused above
        def related(path: str, other: str) -> bool:
            return path == other or path.startswith(other + ".") or other.startswith(path + ".")

        more = [(p, r) for p, r in err.errors if not any(related(p, x) for x, _ in errors)]
        raise SpecError(errors=errors + more, source="draft") from None
    if errors:
        raise SpecError(errors=errors, source="draft")
    notes = []
    key_env = spec["writer"]["api_key_env"]
    if key_env and not env.get(key_env):
        notes.append(f"${key_env} is not set here; the worker that runs the draft needs it in its environment "
                     "(a local server without a key: leave the key variable empty)")
    return DraftPlan(spec, notes)


def queue_draft(conn: Connection, plan: DraftPlan) -> int:
    """Enqueue the planned write_constitution job (CPU only: it calls an API); its id."""
    name = plan.spec.get("name") or plan.spec["task_description"]
    return queue.enqueue(conn, KIND, plan.spec, name=f"draft: {name}"[:200], max_attempts=3)


@dataclass
class Draft:
    """A draft job as the page shows it: its state and, once it succeeded, its principles."""

    job_id: int
    status: str
    message: str  # progress, or why it failed
    name: str | None = None
    principles: list[dict[str, str | None]] | None = None
    writer_model: str | None = None

    @property
    def done(self) -> bool:
        return self.principles is not None


def draft_state(conn: Connection, ws: Workspace, job_id: int) -> Draft | None:
    """The state of draft job ``job_id`` (None: no such write_constitution job); a
    succeeded job's principles come from its run directory's constitution.json."""
    job = queue.get_job(conn, job_id)
    if job is None or job.kind != KIND:
        return None
    spec = job.spec or {}
    out = Draft(job.id, job.status, job.progress_message or "", spec.get("name"),
                writer_model=(spec.get("writer") or {}).get("model"))
    if job.status == "failed":
        out.message = job.error or f"exit code {job.exit_code}"
    if job.status == "succeeded":
        path = ws.resolve(job.run_dir or default_run_dir(job.id, KIND)) / CONSTITUTION_FILE
        try:
            c = constitutions.load(path)
        except ConstitutionError as err:
            out.message = f"the job succeeded but its draft cannot be read: {err}"
            return out
        out.principles = [{"principle": p.principle, "antithesis": p.antithesis} for p in c.principles]
    return out
