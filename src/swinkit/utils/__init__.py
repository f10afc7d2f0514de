"""Utilities every command may use: the CPU allocator tuning (allocator.py), what this CPU can do (cpu.py) and
silencing libraries' log messages (logs.py)."""
