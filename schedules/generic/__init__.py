"""Target-independent schedules: the fallback for blocks without a rule of their own."""

from .parallel import schedule_generic

__all__ = ["schedule_generic"]


def register_all() -> None:
    # Importing registers the float-layer schedules with the strategy registry.
    from . import conv2d, dense  # noqa: F401
