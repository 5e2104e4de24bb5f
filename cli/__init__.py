"""The ``sami`` command line: small command modules, each a thin call into the services.

    cli.registry     the command registry, errors, the workspace and database of a command
    cli.workspace    sami init, sami ui
    cli.experiments  sami submit
    cli.jobs         sami enqueue, jobs, cancel, retry, logs
    cli.worker       sami worker (runs the daemon, `python -m workers`), sami workers
    cli.results      sami import-results, sources, judge, winrates, export
    cli.main         the parser and the entry point (exit codes, errors without tracebacks)

It imports the services, ``db`` and torch-free ``sami_core`` modules only; the worker
daemon and the stages run as processes of their own.
"""
