"""Developer entry point: ``python -m db.migrations {upgrade,current,revision}``.

``revision -m MSG [--autogenerate]`` drafts a migration in versions/ (compare against
the database at ``$SAMI_DATABASE_URL`` or the workspace's SQLite file; review it).
"""

from __future__ import annotations

import argparse

from db.engine import make_engine
from db.migrations import alembic_config, current_revision, upgrade
from db.workspace import database_url


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m db.migrations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("upgrade", help="apply all migrations")
    sub.add_parser("current", help="print the database's revision")
    rev = sub.add_parser("revision", help="draft a new migration file")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true")
    rev.add_argument("--rev-id", help="revision id (default: next number)")
    args = parser.parse_args()

    engine = make_engine(database_url())
    if args.cmd == "upgrade":
        upgrade(engine)
    elif args.cmd == "current":
        print(current_revision(engine))
    else:
        from alembic import command
        from alembic.script import ScriptDirectory

        cfg = alembic_config()
        rev_id = args.rev_id or f"{int(ScriptDirectory.from_config(cfg).get_current_head()) + 1:04d}"
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=args.message, autogenerate=args.autogenerate, rev_id=rev_id)


if __name__ == "__main__":
    main()
