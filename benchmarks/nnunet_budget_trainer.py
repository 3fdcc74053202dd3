"""nnU-Net v2's trainer with a wall-clock budget, for the equal-CPU-budget comparison of issue #14.

nnU-Net finds trainers by class name inside its own package, so ``benchmarks/seg_nnunet.py run`` copies this file
into the nnU-Net environment's ``nnunetv2/training/nnUNetTrainer/variants/`` (it imports nnunetv2, which is not a
dependency of the toolkit). Everything is nnU-Net's (network, loss, augmentation, SGD, poly learning rate, final
validation with mirroring) except the length of training: after the first epoch the trainer measures its duration
and sets the number of epochs so that training ends at ``MEDDIFF_NNUNET_BUDGET_S`` seconds, with the poly schedule
decaying to zero at that last epoch, as nnU-Net's would at its planned end. Epochs are shortened to 50 iterations
(nnU-Net: 250) so that the budget holds several of them, and to 5 validation iterations (nnU-Net: 50): those only
log a pseudo-Dice; the scored predictions are the final weights' on the fold's held-out cases.
"""

from __future__ import annotations

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_MedDiffBudget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming convention)
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ["MEDDIFF_NNUNET_BUDGET_S"])
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 5
        self.num_epochs = 1000  # replaced by the budget's count once the first epoch is timed

    def run_training(self):
        """nnU-Net's loop (``nnUNetTrainer.run_training``), with the epoch count fixed after the first epoch."""
        self.on_train_start()
        started = time.monotonic()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_batches = range(self.num_val_iterations_per_epoch)
                self.on_validation_epoch_end([self.validation_step(next(self.dataloader_val)) for _ in val_batches])
            self.on_epoch_end()
            if self.current_epoch == 1:
                per_epoch = time.monotonic() - started
                self.num_epochs = max(1, int(self.budget_s // per_epoch))
                self.lr_scheduler.max_steps = self.num_epochs
                self.print_to_log_file(f"budget {self.budget_s:.0f} s / {per_epoch:.0f} s: {self.num_epochs} epochs")
        self.on_train_end()
