"""Schedules for ARM CPUs (target key ``arm_cpu``): NEON popcount tensorized."""
