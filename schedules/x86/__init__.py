"""Default schedules for x86 CPUs (served for the generic ``cpu`` target key)."""
