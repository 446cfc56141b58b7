"""Default schedules for x86 CPUs (registered for the generic ``cpu`` target key)."""

from . import bconv2d, bdense, bitpack, bmaxpool2d  # noqa: F401  (importing registers them)
