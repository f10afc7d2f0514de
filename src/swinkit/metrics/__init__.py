"""Metrics the tasks share: classification (top-k accuracy, loss, confusion matrix), used by the image and video
classifiers."""
