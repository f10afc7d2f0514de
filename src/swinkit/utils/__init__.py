"""Utilities every command may use: the CPU allocator tuning (allocator.py) and what this CPU can do (cpu.py)."""
