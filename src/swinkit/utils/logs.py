"""Silencing a library's log messages that a user can do nothing about, for one block of code."""
from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Messages of the logger `name` below `level` are dropped inside the block; its level is restored after."""
    log = logging.getLogger(name)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)
