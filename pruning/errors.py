from surgery.errors import SurgeryError


class PruningError(SurgeryError):
    """A plan that cannot be made or applied: bad ratios, removing everything, another model's plan."""
