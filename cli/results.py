"""``sami import-results``, ``sources``, ``judge``, ``winrates``, ``export``: response
sources, judging them, and what comes out (tables and CSV)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cli.registry import (CliError, EnvironmentProblem, check_writable_folder, command, integer, number, print_table, tx,
                          workspace)
from sami_core.judge.usage import job_usage_text
from services import exports, jobs, judging, results

# --- import-results, sources -----------------------------------------------------------------


def _configure_import_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path, metavar="FILE|FOLDER",
                   help="published results files (<checkpoint>-<model>-<constitution source>-constitution-"
                        "temperature-<t>.json) or folders of them")
    p.add_argument("--shipped", action="store_true",
                   help="import the responses shipped in sami_core/data/sami_tldr/responses/")


@command("import-results", "import published response files as response sources (idempotent)",
         _configure_import_results)
def cmd_import_results(args: argparse.Namespace) -> int:
    files = (results.shipped_results() if args.shipped else []) + results.results_files(args.paths)
    if not files:
        raise CliError("name results files or folders, or pass --shipped")
    loaded = results.load_results_files(files)  # every file checked first: all or nothing
    infos = tx(lambda c: [results.import_results_file(c, f, res) for f, res in loaded])
    for info in infos:
        print(f"{info['source_id']:>4}  {info['source']}  ({info['n_responses']} responses, "
              f"checkpoint {info['checkpoint']}, model {info['model']}, constitution "
              f"{info['constitution_source']}, temperature {info['temperature']:g})")
    return 0


@command("sources", "list response sources (sampled, baseline, imported)",
         lambda p: p.add_argument("--json", action="store_true"))
def cmd_sources(args: argparse.Namespace) -> int:
    rows = tx(results.list_sources, write=False)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "constitution_label"} for r in rows], default=str, indent=1))
        return 0
    print_table([("id", "kind", "experiment", "responses", "constitution", "model", "label")] + [
        (str(r["id"]), r["kind"], "-" if r["experiment_id"] is None else str(r["experiment_id"]),
         str(r["n_responses"]), r["constitution_label"], r.get("model") or "-", r["label"]) for r in rows],
        right=frozenset({0, 2, 3}))
    return 0


# --- judge ------------------------------------------------------------------------------------


def _configure_judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidate", required=True, metavar="SRC",
                   help="a response source (id, label or label#id; see `sami sources`) or a file/run directory")
    p.add_argument("--baseline", required=True, metavar="SRC", help="the source it is compared with")
    p.add_argument("--judge-model", default="gpt-4o", help="judge model (deployment on Azure; hub id/dir for hf)")
    p.add_argument("--provider", choices=("openai", "azure", "hf", "rule", "auto"), default="openai",
                   help="auto = OpenAI (--judge-model) when the key variable is set, Azure OpenAI when "
                        "AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT are, else the local hf judge on the demo model; "
                        "rule = a deterministic rule named by --judge-model (concision)")
    p.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--azure-endpoint", help="Azure: https://NAME.openai.azure.com")
    p.add_argument("--api-version", help="Azure: the API version")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable holding the key ('' = no key); never the key itself")
    p.add_argument("--concurrency", type=integer(1, 1024), default=16, help="requests in flight at once")
    p.add_argument("--max-attempts", type=integer(1, 100), help="attempts per request (429, 5xx, timeouts; default 6)")
    p.add_argument("--backoff", type=number(0), metavar="S", help="first retry wait in seconds (doubles; default 1)")
    p.add_argument("--both-orders", action="store_true", help="judge every pair in both A/B orders")
    p.add_argument("--limit", type=integer(1), help="judge only the first N pairs")
    p.add_argument("--temperature", type=number(0),
                   help="compare only responses sampled at this temperature (both sides)")
    p.add_argument("--experiment", type=integer(1), help="resolve labels in this experiment first; the job belongs to it")
    p.add_argument("--template", metavar="NAME|FILE",
                   help="judge template: `paper` (shipped: the paper's system message, a comparison of at most 100 "
                        "words, `Final Response: A|B`) or a YAML file with system, user and answer_pattern "
                        "(default: the built-in template)")
    p.add_argument("--unparseable", choices=("apart", "tie"), default="apart",
                   help="answers with no readable choice: counted apart as invalid (default) or as ties (the paper)")
    p.add_argument("--price-prompt", type=number(0), metavar="USD", help="USD per million prompt tokens (cost estimate)")
    p.add_argument("--price-completion", type=number(0), metavar="USD", help="USD per million completion tokens")
    p.add_argument("--now", action="store_true", help="judge in this process (with progress) instead of queueing")
    p.add_argument("--run-dir", help="run directory (default: runs/ in the workspace)")


@command("judge", "judge a candidate's responses against a baseline's (queued, or --now)", _configure_judge)
def cmd_judge(args: argparse.Namespace) -> int:
    ws = workspace(create=True)
    opts = judging.JudgeOptions(
        candidate=args.candidate, baseline=args.baseline, provider=args.provider, model=args.judge_model,
        base_url=args.base_url, azure_endpoint=args.azure_endpoint, api_version=args.api_version,
        api_key_env=args.api_key_env or None, concurrency=args.concurrency, max_attempts=args.max_attempts,
        backoff_initial_s=args.backoff, both_orders=args.both_orders, limit=args.limit,
        temperature=args.temperature, experiment_id=args.experiment, template=args.template,
        unparseable=args.unparseable, price_prompt_per_mtok=args.price_prompt,
        price_completion_per_mtok=args.price_completion)
    plan = judging.plan_judge(tx, ws, opts, os.environ)
    for note in plan.notes:
        print(f"sami: {note}", file=sys.stderr)
    est = plan.estimate
    print(f"judge: {est.pairs} pairs, {est.judgments} judgments: {est.cached} cached, "
          f"{est.to_send} requests to send", flush=True)
    if est.to_send and plan.spec["judge"]["provider"] != "hf":
        print(f"judge: before sending: {est.tokens_text()}", flush=True)
    if not args.now:
        job_id = tx(lambda c: judging.queue_judge(c, plan, experiment_id=args.experiment, run_dir=args.run_dir))
        print(f"queued judge job {job_id}")
        return 0

    def progress(p: dict[str, Any]) -> None:
        if p.get("total"):
            print(f"judge: {p.get('done')}/{p['total']} judgments", file=sys.stderr, flush=True)

    run = judging.run_judge_now(tx, ws, plan, experiment_id=args.experiment, run_dir=args.run_dir,
                                on_progress=progress)
    out = run.outputs
    if usage := job_usage_text(out, plan.spec):
        print(f"judge: {usage}")
    print(f"judge: {out['n_judgments']} judgments ({out['requests_sent']} requests sent, "
          f"{out['cached']} cached); {run.stored} stored in the database"
          f"{'' if plan.stored else ' (a side is no response source there)'}; run directory {run.run_dir}")
    return 0


# --- winrates, export -----------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _configure_winrates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", type=integer(1), help="only this experiment's judgments")
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file (any path you can write)")
    p.add_argument("--json", action="store_true", help="print JSON")


def output_file(flag: str, path: Path) -> Path:
    """A CSV path typed by the user, checked before anything is read: refused (exit 2) when
    it names a folder or its folder is a file; exit 1 when its folder cannot be written.
    A missing folder is created."""
    path = path.expanduser()
    if path.is_dir():
        raise CliError(f"{flag} {path} is a folder; name a file in it, e.g. {path / 'export.csv'}")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
            break
    check_writable_folder(path.absolute().parent, f"{flag} {path}", "choose a folder you can write to")
    return path


def _write(flag: str, rows: list[dict], cols: Any, path: Path) -> Path:
    try:
        return exports.write_csv_file(rows, cols, path)
    except OSError as err:
        raise EnvironmentProblem(f"{flag} {path}: cannot write it ({err.strerror or err}); "
                                 f"choose a path you can write to") from None


@command("winrates", "win rates of judged candidates against their baselines", _configure_winrates)
def cmd_winrates(args: argparse.Namespace) -> int:
    csv_path = output_file("--csv", args.csv) if args.csv else None
    rows, cols = tx(lambda c: exports.export_rows(c, "winrates", experiment_id=args.experiment), write=False)
    if csv_path is not None:
        print(f"wrote {_write('--csv', rows, cols, csv_path)}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("\t".join(cols))
    for r in rows:
        print("\t".join(_fmt(r[c]) for c in cols))
    return 0


def _configure_summary(p: argparse.ArgumentParser) -> None:
    from cli.jobs import _experiment_ref

    p.add_argument("--experiment", type=_experiment_ref, default="latest", metavar="ID|latest",
                   help="the experiment (default: the newest)")
    p.add_argument("--json", action="store_true", help="print JSON")


@command("summary", "an experiment's held-out MI and win rates, per iteration", _configure_summary)
def cmd_summary(args: argparse.Namespace) -> int:
    def read(c: Any) -> tuple[int, list[dict]]:
        exp = jobs.experiment_id(c, args.experiment)
        return exp, exports.iteration_rows(c, exp)

    exp, rows = tx(read, write=False)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"experiment {exp}: held-out MI lower bound (nats, 95% bootstrap interval; ln N is the most) and win "
          "rate against the baseline (95% Wilson interval)")
    table = [("ITER", "MODEL", "MI [95%]", "VS", "JUDGE", "N", "WIN RATE [95%]")]
    for r in rows:
        mi = "-" if r["mi"] is None else f"{r['mi']:.3f} [{_fmt(r['mi_ci_low'])}, {_fmt(r['mi_ci_high'])}]"
        win = "-" if r["win_rate"] is None else f"{r['win_rate']:.3f} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        table.append((str(r["iteration"]), r["label"], mi, r["baseline"] or "-", r["judge_model"] or "-",
                      _fmt(r["n"]), win))
    print_table(table, last_free=True)
    return 0


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=exports.EXPORTS)
    p.add_argument("--out", required=True, type=Path,
                   help="the CSV file to write: any path you can write (relative ones: to --out-dir)")
    p.add_argument("--out-dir", type=Path, default=None, help="folder for a relative --out (default: current directory)")
    p.add_argument("--experiment", type=integer(1), help="only this experiment's rows")
    p.add_argument("--source", help="only this response source (id, label or label#id; not for mi)")


@command("export", "export responses, judgments, win rates or held-out MI as CSV (UTF-8, formula-safe)",
         _configure_export)
def cmd_export(args: argparse.Namespace) -> int:
    if args.out_dir is not None and args.out_dir.exists() and not args.out_dir.is_dir():
        raise CliError(f"--out-dir {args.out_dir} is a file, not a folder; name a folder (created when missing)")
    path = output_file("--out", (args.out_dir or Path()) / args.out)  # refuse before reading anything
    rows, cols = tx(lambda c: exports.export_rows(c, args.what, experiment_id=args.experiment,
                                                  source=args.source), write=False)
    path = _write("--out", rows, cols, path)
    print(f"wrote {len(rows)} rows to {path}")
    return 0
