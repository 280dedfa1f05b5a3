"""Training: the CLI's recipe (:mod:`.recipe`), its stateless pieces (:mod:`.batches`), exact resume
(:mod:`.resume_state`) and building or restoring a run's model (:mod:`.model`)."""

from ..config import TrainConfig
from .batches import evaluate
from .model import load_snapshot_into, restore_model
from .recipe import TrainingRecipe, resume, train

__all__ = ["TrainConfig", "TrainingRecipe", "train", "resume", "restore_model", "load_snapshot_into", "evaluate"]
