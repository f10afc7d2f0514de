"""Data shared by the tasks: image folders (folders.py), the classification transforms (transforms.py) and the
embedded handwritten digits (digits.py). Each task's own data (COCO / YOLO, segmentation pairs, clips, restoration
patches) lives beside it in swinkit/tasks/."""
from ..io.images import IMG_EXTENSIONS, load_image
from .digits import digits_folder
from .folders import ImageFolderDataset, build_datasets, check_image, split_indices
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mixup_cutmix, train_transform

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "ImageFolderDataset", "build_datasets", "check_image",
           "digits_folder", "eval_transform", "load_image", "mixup_cutmix", "split_indices",
           "train_transform"]
