"""tinyld's probes inside other libraries' training loops: :mod:`tinyld.integrations.trl` (TRL's trainers).
Each needs its library (an extra); nothing here is imported by ``import tinyld``."""
