"""Fine-tuning with distillation, and evaluation."""

from autoprune.finetune.evaluate import Evaluation, evaluate
from autoprune.finetune.loop import EpochStats, TrainingState, distillation_loss, finetune

__all__ = ["EpochStats", "Evaluation", "TrainingState", "distillation_loss", "evaluate", "finetune"]
