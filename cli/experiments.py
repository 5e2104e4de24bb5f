"""``sami submit``: an experiment spec -> a constitution version and a DAG of jobs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.registry import CliError, command, tx
from services import experiments
from services.experiments import Submitted


def _configure_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="an experiment spec, YAML or JSON (see sami_core/examples/)")
    p.add_argument("--name", help="the experiment's name (overrides the spec's `name`)")
    p.add_argument("--dry-run", action="store_true", help="validate and show the jobs; enqueue nothing")
    p.add_argument("--json", action="store_true", help="print JSON: the experiment id and its jobs")
    p.add_argument("--if-absent", action="store_true",
                   help="submit only when the workspace has no experiment of this name (e.g. `make run`'s demo)")


@command("submit", "expand an experiment spec into its jobs and enqueue them (prints the experiment id)",
         _configure_submit)
def cmd_submit(args: argparse.Namespace) -> int:
    prepared = experiments.prepare(args.spec, name=args.name)  # SpecError: exit 2, nothing written
    try:
        if args.if_absent and (found := tx(lambda c: experiments.already_submitted(c, prepared), write=False)):
            print(f"experiment {found} ({prepared.exp.name}) is already in the workspace: not submitted again")
            return 0
        if args.dry_run:
            result = tx(lambda c: experiments.dry_run(c, prepared), write=False)
        else:
            result = tx(lambda c: experiments.submit(c, prepared))
    except experiments.SubmitError as err:
        raise CliError(f"{args.spec}: {err}") from None
    for w in result.warnings:
        print(f"sami: warning: {w}", file=sys.stderr)
    print(json.dumps(result.as_dict(), indent=1) if args.json else format_table(result))
    return 0


def format_table(result: Submitted) -> str:
    head = (f"experiment {result.experiment_id} ({result.name})" if not result.dry_run
            else f"dry run: experiment {result.name!r} (nothing enqueued)")
    c = result.constitution
    lines = [
        f"{head}: {len(result.jobs)} jobs, run directories in {result.runs_dir}",
        f"constitution: {c['name']}" + (f" v{c['version']} (id {c['id']}, {'new' if c['created'] else 'reused'})"
                                        if c.get("id") is not None else f" (from {c['origin']})"),
    ]
    for m in c.get("members", []):  # a set: one constitution drawn per query
        stored = m.get("id") is not None
        lines.append(f"  member: {m['name']}" + (f" v{m['version']} (id {m['id']}, "
                                                 f"{'new' if m['created'] else 'reused'})" if stored
                                                 else f" (from {m['origin']})"))
    header = ("ID", "KEY", "KIND", "GPUS", "DEPENDS ON", "LABEL")
    table = [header] + [
        ("-" if j["id"] is None else str(j["id"]), j["key"], j["kind"], str(j["devices"]),
         ",".join(j["depends_on"]) or "-", j["label"]) for j in result.jobs
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines)
