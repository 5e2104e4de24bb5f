"""The product's actions, shared by every front end (the ``sami`` command line and the
Streamlit app): submit an experiment, enqueue, cancel and retry jobs, import results,
queue or run a judge, win-rate tables and exports.

Torch-free: this package imports ``db`` and torch-free ``sami_core`` modules only, and
runs stages as subprocesses (services.stages). Front ends call these functions inside
their own transactions (db.engine.transact) and present the results; nothing here prints.
"""
