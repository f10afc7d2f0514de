"""The tasks the training loop runs, by name. Each is one file here with a `Task` subclass (see base.py); it is
imported only when used, so one task's dependencies never burden another's commands."""
from __future__ import annotations

import importlib

from .base import Env, Loaded, Task, TaskSettings, TrainSettings

TASKS: dict[str, str | type[Task]] = {  # name -> "module:class" (or the class itself)
    "classify": "swinkit.tasks.classify:ClassifyTask",
    "segment": "swinkit.tasks.segment:SegmentTask",
    "video": "swinkit.tasks.video:VideoTask",
    "restore": "swinkit.tasks.restore:RestoreTask",
    "detect": "swinkit.tasks.detect:DetectTask",
    "pretrain": "swinkit.tasks.pretrain:PretrainTask",
    "ground": "swinkit.tasks.grounding:GroundTask",  # predict only (GroundingDINO)
    "panoptic": "swinkit.tasks.panoptic:PanopticTask",
}
DEFAULT_TASK = "classify"


def get_task(name: str) -> type[Task]:
    """The Task class registered as `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASKS)}")
    entry = TASKS[name]
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry


__all__ = ["TASKS", "DEFAULT_TASK", "get_task", "Task", "TaskSettings", "TrainSettings", "Env", "Loaded"]
