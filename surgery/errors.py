"""Errors that users see. Every message names what was wrong and what to do instead."""


class SurgeryError(ValueError):
    """Bad input or an unusable model/artefact. Subclasses ValueError so callers can catch either."""


class UnsupportedArchitectureError(SurgeryError):
    pass


class ModelNotFoundError(SurgeryError):
    pass
