"""Errors a user of the game engine sees. Each message names what was wrong and what to do instead.

All subclass ValueError so callers can catch either the specific error or ValueError.
"""


class ProbeError(ValueError):
    """Bad input to the game engine, an estimator, a store or a values file."""


class InvalidGameOutputError(ProbeError):
    """The value function returned NaN/inf or an array of the wrong shape."""


class BudgetTooSmallError(ProbeError):
    """The evaluation budget is below what the estimator needs for one unbiased round."""


class TooManyPlayersError(ProbeError):
    """An exact computation was asked for on a game too large to enumerate."""


class FingerprintMismatchError(ProbeError):
    """A store or a values file belongs to a different game (model, task, metric, ablation, players)."""


class StoreCorruptError(ProbeError):
    """A coalition store has a damaged record that is not just a torn final write."""


class StoreLockedError(ProbeError):
    """Another process is writing the coalition store (one writer at a time)."""


class MalformedValuesFileError(ProbeError):
    """A values JSON file is not one this version can read."""
