"""Optional mirroring of experiments to the trackers people use (MLflow, Weights & Biases).

The workbench's database stays the record; a tracker is a copy, written when a job of an
experiment whose spec has a ``tracking`` section succeeds (:func:`mirror_job`, one call
from the worker after the job's outputs are stored). What is mirrored (tracking.records):
the experiment's params (its resolved spec, flattened), per-step metrics with their step,
the N x N log-prob matrices and checkpoint paths as JSON artifacts, the held-out MI and
win rates per iteration. One tracker run per experiment, one child run per iteration
(tracking.backends).

This package imports only the standard library and ``db`` at import time, so the worker
daemon can call it; ``mlflow`` and ``wandb`` are imported only when a spec asks for them.
A tracker that fails (server down, bad URI, not installed on this worker) never fails the
job: a warning goes to the job's ``stage.log`` and the worker's log. What was mirrored is
kept in ``tracking.json`` in the experiment's run directory, so a worker restarted after a
crash does not log the same job twice. Secrets (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...)
are read by the trackers' own clients from the environment; none is ever stored.
"""

from __future__ import annotations

from tracking.installed import MODULES, install_problem
from tracking.mirror import mirror_job

__all__ = ["MODULES", "install_problem", "mirror_job"]
