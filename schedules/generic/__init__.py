"""Target-independent schedules: the fallback for blocks without a rule of their own, and the float layers'."""

from .parallel import schedule_generic

__all__ = ["schedule_generic"]
