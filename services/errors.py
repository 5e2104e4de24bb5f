"""Errors of the product's actions: each message names the field or source and the fix."""

from __future__ import annotations

from sami_core.errors import SamiError


class ServiceError(SamiError, ValueError):
    """An action refused as asked (nothing was written); the message says what to change."""


class JudgingError(ServiceError):
    """A response source that does not exist, a results file that cannot be imported, or a
    judge run that does not match the database."""
