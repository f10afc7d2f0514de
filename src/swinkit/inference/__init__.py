"""Inference, shared by eval, predict, export, viz and restore: loading a trained run or any file load_model reads
with its task and meta, and casting it (load.py); sliding-window, multi-scale and flipped segmentation and tiled
restoration of whole images (dense.py). The tasks use dense.py; load.py uses the tasks."""
