"""Errors a user can act on. Each message names the field or file and says how to fix it."""


class SamiError(Exception):
    """Base class: an error whose message is meant for the user (no traceback needed)."""


class SpecError(SamiError):
    """A spec failed validation; the message lists `field.path: reason` lines."""


class ModelLoadError(SamiError):
    """A model or tokenizer could not be loaded (offline)."""


class DataError(SamiError):
    """Queries could not be loaded (missing file, missing field, empty set)."""


class ConstitutionError(SamiError):
    """A constitution is malformed (empty or duplicate principles, missing antithesis)."""


class RunDirError(SamiError):
    """A run directory belongs to another spec or is unusable."""


class TrainingDiverged(SamiError):
    """The loss became non-finite; the message names the last good checkpoint."""
