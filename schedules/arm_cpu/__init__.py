"""Schedules for ARM CPUs (target key ``arm_cpu``): NEON popcount tensorized."""

from . import bconv2d  # noqa: F401  (importing registers it)
