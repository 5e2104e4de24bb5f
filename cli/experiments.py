"""``sami submit``: an experiment spec -> a constitution version and a DAG of jobs; a spec
with a ``sweep`` section -> one experiment per point (services.sweeps); ``--from ID``: a
stored experiment's spec again, ``--set PATH=VALUE`` changing fields."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.registry import CliError, command, integer, tx
from sami_core.errors import SpecError
from sami_core.spec import read_spec_file
from services import experiments, sweeps
from services.experiments import Submitted


def _configure_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, nargs="?",
                   help="an experiment spec, YAML or JSON (see sami_core/examples/); a `sweep:` section submits "
                        "one experiment per point of its grid")
    p.add_argument("--from", dest="from_id", type=integer(1), metavar="EXPERIMENT_ID",
                   help="submit a copy of a stored experiment's spec instead of a file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="set a spec field by dotted path, the value read as YAML (e.g. --set training.lr=1e-6); "
                        "repeatable")
    p.add_argument("--name", help="the experiment's name (overrides the spec's `name`)")
    p.add_argument("--dry-run", action="store_true", help="validate and show the jobs; enqueue nothing")
    p.add_argument("--json", action="store_true", help="print JSON: the experiment id and its jobs")
    p.add_argument("--if-absent", action="store_true",
                   help="submit only when the workspace has no experiment (a sweep: no sweep) of this name "
                        "(e.g. `make run`'s demo)")


def _spec_data(args: argparse.Namespace) -> tuple[dict, str]:
    """The spec to submit (a file's, or a stored experiment's) with ``--set`` applied, and its source."""
    if (args.spec is None) == (args.from_id is None):
        raise CliError("name a spec file or --from EXPERIMENT_ID (one of them)")
    if args.from_id is not None:
        source = f"experiment {args.from_id}"
        return tx(lambda c: sweeps.clone_spec(c, args.from_id, args.overrides), write=False), source
    data = read_spec_file(args.spec)  # SpecError: exit 2
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a mapping of keys to values, got {type(data).__name__}", source=str(args.spec))
    return sweeps.apply_overrides(data, args.overrides), str(args.spec)


@command("submit", "expand an experiment spec (or a sweep of them) into jobs and enqueue them (prints the "
         "experiment ids)", _configure_submit)
def cmd_submit(args: argparse.Namespace) -> int:
    data, source = _spec_data(args)
    if sweeps.is_sweep(data):
        return _submit_sweep(args, data, source)
    prepared = experiments.prepare_data(data, source=source, name=args.name)  # SpecError: exit 2, nothing written
    try:
        if args.if_absent and (found := tx(lambda c: experiments.already_submitted(c, prepared), write=False)):
            print(f"experiment {found} ({prepared.exp.name}) is already in the workspace: not submitted again")
            return 0
        if args.dry_run:
            result = tx(lambda c: experiments.dry_run(c, prepared), write=False)
        else:
            result = tx(lambda c: experiments.submit(c, prepared))
    except experiments.SubmitError as err:
        raise CliError(f"{source}: {err}") from None
    for w in result.warnings:
        print(f"sami: warning: {w}", file=sys.stderr)
    print(json.dumps(result.as_dict(), indent=1) if args.json else format_table(result))
    return 0


def _submit_sweep(args: argparse.Namespace, data: dict, source: str) -> int:
    prepared = sweeps.prepare_sweep(data, source=source, name=args.name)  # every point checked; nothing written
    try:
        if args.if_absent and (found := tx(lambda c: sweeps.already_submitted(c, prepared), write=False)):
            print(f"sweep {found} ({prepared.name}) is already in the workspace: not submitted again")
            return 0
        if args.dry_run:
            result = tx(lambda c: sweeps.dry_run_sweep(c, prepared), write=False)
        else:
            result = tx(lambda c: sweeps.submit_sweep(c, prepared))  # one transaction: every point or none
    except experiments.SubmitError as err:
        raise CliError(f"{source}: {err}") from None
    for w in result.warnings:
        print(f"sami: warning: {w}", file=sys.stderr)
    print(json.dumps(result.as_dict(), indent=1) if args.json else format_sweep(result))
    return 0


def format_sweep(result: sweeps.SubmittedSweep) -> str:
    """A header, then one line per point: its experiment id and its swept values."""
    n = len(result.points)
    head = (f"sweep {result.sweep_id} ({result.name}): {n} experiments" if not result.dry_run
            else f"dry run: sweep {result.name!r}, {n} experiments (nothing enqueued)")
    jobs = sum(len(s.jobs) for s in result.points)
    lines = [f"{head}, {jobs} jobs"]
    for s, values in zip(result.points, result.values, strict=True):
        exp = "experiment -" if s.experiment_id is None else f"experiment {s.experiment_id}"
        lines.append(f"{exp}: " + " ".join(f"{k}={sweeps.format_value(v)}" for k, v in values.items()))
    return "\n".join(lines)


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
