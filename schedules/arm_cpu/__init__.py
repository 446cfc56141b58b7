"""Schedules for ARM CPUs (target key ``arm_cpu``): NEON popcount tensorized."""

from . import bconv2d, bdense  # noqa: F401  (importing registers them)
