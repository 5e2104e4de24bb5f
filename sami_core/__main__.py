"""`python -m sami_core <command>`: the method's stages, runnable by hand or under Slurm.

    python -m sami_core make-demo-model DIR
    python -m sami_core generate --spec FILE --run-dir DIR
    python -m sami_core train    --spec FILE --run-dir DIR   (also under torchrun)
    python -m sami_core sample   --spec FILE --run-dir DIR
    python -m sami_core judge    --spec FILE --run-dir DIR
    python -m sami_core evaluate --spec FILE --run-dir DIR   (held-out MI)
    python -m sami_core write_constitution --spec FILE --run-dir DIR
    python -m sami_core validate KIND FILE
    python -m sami_core demo     --run-dir DIR
"""

from __future__ import annotations

import argparse
import os
import sys

from sami_core.contract import EXIT_BAD_INPUT, EXIT_TRANSIENT, PROGRESS_FILE, SPEC_FILE, STAGE_KINDS
from sami_core.errors import SamiError, TransientError

STAGES = STAGE_KINDS  # a stage that refuses its input (spec, model, data) exits EXIT_BAD_INPUT: not retried


def _run_stage(kind: str, spec_path: str, run_dir: str) -> int:
    from sami_core.rundir import RunDir
    from sami_core.spec import load_spec

    spec = load_spec(kind, spec_path)
    try:
        if kind == "generate":
            from sami_core.stages import run_generate

            run_generate(spec, run_dir)
        elif kind == "sample":
            from sami_core.stages import run_sample

            run_sample(spec, run_dir)
        elif kind == "judge":
            from sami_core.judge.stage import run_judge

            run_judge(spec, run_dir)
        elif kind == "evaluate":
            from sami_core.evaluate import run_evaluate

            run_evaluate(spec, run_dir)
        elif kind == "write_constitution":
            from sami_core.judge.stage import run_write_constitution

            run_write_constitution(spec, run_dir)
        else:
            from sami_core.train import run_train

            run_train(spec, run_dir)
    except BaseException as err:
        if int(os.environ.get("RANK", "0")) == 0 and os.path.exists(os.path.join(run_dir, SPEC_FILE)):
            rd = RunDir(run_dir)
            p = rd.path / PROGRESS_FILE
            import json

            prog = json.loads(p.read_text()) if p.exists() else {}
            rd.progress(kind, prog.get("done", 0), prog.get("total", 0), prog.get("unit", ""),
                        f"{type(err).__name__}: {err}", status="failed")
        raise
    return 0


def _run_dir_problem(run_dir: str) -> tuple[int, str] | None:
    """(exit code, reason) when ``run_dir`` cannot be a run directory: a file (bad input) or a
    folder that cannot be created or written (the environment: exit 1). Creates it if missing."""
    import tempfile
    from pathlib import Path

    path = Path(run_dir).expanduser()
    for p in [path, *path.absolute().parents]:
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"{p} is a file"
                return EXIT_BAD_INPUT, f"{what}, not a folder; name a folder (it is created when missing)"
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return 1, f"cannot be written ({err.strerror or err}); choose a folder this user can write"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sami_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make-demo-model", help="build the embedded demo model offline", add_help=False)
    for kind in STAGES:
        p = sub.add_parser(kind, help=f"run the {kind} stage")
        p.add_argument("--spec", required=True, help="YAML or JSON spec file")
        p.add_argument("--run-dir", required=True, help="output directory (resumed when it exists)")
    v = sub.add_parser("validate", help="validate a stage spec file and print it with defaults")
    v.add_argument("kind", choices=STAGES)
    v.add_argument("spec")
    d = sub.add_parser("demo", help="generate -> train (torchrun, 2 processes) -> sample, on the demo model")
    d.add_argument("--run-dir", required=True)
    d.add_argument("--nproc", type=int, default=2, help="training processes (torchrun)")
    d.add_argument("--quick", action="store_true", help="an even smaller run (for tests)")

    if argv and argv[0] == "make-demo-model":
        from sami_core.demo_model import main as demo_model_main

        return demo_model_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command in STAGES or args.command == "demo":
        problem = _run_dir_problem(args.run_dir)
        if problem is not None:  # nothing can be recorded in it: say so here, in one line
            code, message = problem
            print(f"error: --run-dir {args.run_dir}: {message}", file=sys.stderr)
            return code
    try:
        if args.command in STAGES:
            return _run_stage(args.command, args.spec, args.run_dir)
        if args.command == "validate":
            import json

            from sami_core.spec import load_spec

            print(json.dumps(load_spec(args.kind, args.spec).model_dump(mode="json"), indent=2))
            return 0
        if args.command == "demo":
            from sami_core.demo import run_demo

            run_demo(args.run_dir, nproc=args.nproc, quick=args.quick)
            return 0
    except TransientError as err:  # may pass by itself: the queue retries after a backoff
        print(f"error (transient): {err}", file=sys.stderr)
        if args.command in STAGES:
            from sami_core.rundir import record_exit

            record_exit(args.run_dir, EXIT_TRANSIENT, f"{type(err).__name__}: {err}")
        return EXIT_TRANSIENT
    except (SamiError, ValueError) as err:  # ValueError: bad arguments found deep in a stage
        print(f"error: {err}", file=sys.stderr)
        if args.command in STAGES:
            from sami_core.rundir import record_exit

            record_exit(args.run_dir, EXIT_BAD_INPUT, f"{type(err).__name__}: {err}")
        return EXIT_BAD_INPUT
    return 1


if __name__ == "__main__":
    sys.exit(main())
