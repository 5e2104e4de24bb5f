"""Errors a user can act on. Each message names the field or file and says how to fix it."""

from __future__ import annotations

from collections.abc import Iterable


class SamiError(Exception):
    """Base class: an error whose message is meant for the user (no traceback needed)."""


class SpecError(SamiError):
    """A spec failed validation.

    ``errors`` holds what is wrong as (field path, reason) pairs, in the order found
    (path ``""``: no particular field); ``source`` names what was validated (a spec file,
    ``form``), or None. Callers that show errors by field read ``errors``; the message
    (``str(err)``) is for people:

    * ``SpecError(errors=[("training.lr", "must be > 0"), ...], source="form")``:
      ``form: invalid spec`` then one ``  training.lr: must be > 0`` line per pair
      (``(top level)`` for the path ``""``);
    * ``SpecError(reason, source=None, path="")``: the one sentence ``reason``, prefixed
      by ``<source>: `` when a source is given; ``errors`` is ``[(path, reason)]``.
    """

    def __init__(self, reason: str | None = None, *, errors: Iterable[tuple[str, str]] = (),
                 source: str | None = None, path: str = "") -> None:
        pairs = [(str(p), str(r)) for p, r in errors]
        if reason is not None and pairs:
            raise TypeError("SpecError takes a reason or errors, not both")
        if reason is None and not pairs:
            raise TypeError("SpecError needs a reason or at least one (path, reason) pair")
        if reason is not None:
            pairs = [(path, reason)]
            message = f"{source}: {reason}" if source is not None else reason
        else:
            message = f"{source if source is not None else 'spec'}: invalid spec\n" + "\n".join(
                f"  {p or '(top level)'}: {r}" for p, r in pairs)
        super().__init__(message)
        self.errors: list[tuple[str, str]] = pairs
        self.source = source


class TransientError(SamiError):
    """A fault that may pass by itself (an endpoint unreachable, a timeout, a rate limit,
    the model hub out of reach): the stage exits 75 and the queue retries it after a
    backoff, unlike bad input (exit 2, not retried)."""


class ModelLoadError(SamiError):
    """A model or tokenizer could not be loaded (offline)."""


class ModelUnreachable(ModelLoadError, TransientError):
    """A hub model that is neither in the local cache nor reachable (no network, the hub
    down, HF_HUB_OFFLINE=1 on a node whose cache lacks it): may pass, so transient."""


_UNREACHABLE_NAMES = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
                      "ReadTimeout", "Timeout", "ConnectError", "TimeoutException", "ProxyError"}


def is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says a remote was out of reach,
    as opposed to refusing what was asked (not found, bad config)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(c.__name__ in _UNREACHABLE_NAMES for c in type(e).__mro__):
            return True
        if "couldn't connect to" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


class DataError(SamiError):
    """Queries could not be loaded (missing file, missing field, empty set)."""


class ConstitutionError(SamiError):
    """A constitution is malformed (empty or duplicate principles, missing antithesis)."""


class RunDirError(SamiError):
    """A run directory belongs to another spec or is unusable."""


class TrainingDiverged(SamiError):
    """The loss became non-finite; the message names the last good checkpoint."""
