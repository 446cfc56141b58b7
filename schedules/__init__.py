"""TIR schedules per target family (x86/, generic/, later arm_cpu/) and their tensor intrinsics."""
