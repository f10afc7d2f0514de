"""Training: the one loop every task uses (loop.py: `swinkit train`), per-sample seeding (sampling.py), knowledge
distillation (distill.py) and quantization-aware training (qat.py). The loop's names are imported on first use (PEP
562), so that a task can use distill.py and qat.py without importing the loop, which imports the tasks."""
import importlib

_LOOP = ("TrainingError", "Trainer", "WarmupCosine", "add_arguments", "layered", "no_weight_decay", "param_groups",
         "resolve_settings", "run")


def __getattr__(name: str):
    if name not in _LOOP:
        raise AttributeError(f"module 'swinkit.train' has no attribute {name!r}")
    return getattr(importlib.import_module(".loop", __name__), name)
