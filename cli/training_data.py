"""``sami import-training-data``: the paper's published training data as a finished
generate output that a train spec can name."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.registry import command, integer, workspace
from services.training_data import import_training_data


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help='a JSON object keyed by example index, each a list of N entries '
                   '{"prompt", "response", "example_id"} (the SAMI paper\'s format)')
    p.add_argument("--n", type=integer(0, 10_000), required=True, help="N: entries (constitution variants) per example; checked")
    p.add_argument("--name", help="the run directory's name under $SAMI_HOME/runs/imported (default: the file's stem)")
    p.add_argument("--json", action="store_true", help="print JSON: the run directory and counts")


@command("import-training-data", "import the paper's generated training data as a generate output to train on",
         _configure)
def cmd_import_training_data(args: argparse.Namespace) -> int:
    ws = workspace(create=True)
    done = import_training_data(args.file, args.n, ws.runs_dir, args.name)
    if args.json:
        print(json.dumps(done.as_dict(), indent=1))
    else:
        print(f"imported {done.n_queries} queries x N={done.n_constitutions} into {done.run_dir}\n"
              f"train on it with a train spec's `data: {{path: {done.run_dir}}}`")
    return 0
