"""Data-set layouts, label conventions, patient-level splits and validation of data-set folders."""

from meddiffusion.data.layouts import CaseFiles, detect_layout, read_dataset
from meddiffusion.data.splits import kfold_splits, train_test_split

__all__ = ["CaseFiles", "detect_layout", "kfold_splits", "read_dataset", "train_test_split"]
