"""PPL (proactive privacy-preserving learning for hashing retrieval): generator, surrogate, losses, module."""

from models.ppl.generator import PerturbationGenerator, apply_perturbation, project_perturbation
from models.ppl.losses import (
    affinity_loss,
    matching_loss,
    median_bandwidth,
    objective_scale,
    privacy_loss,
    similarity_loss,
    similarity_matrix,
    smmd,
)
from models.ppl.module import PPL
from models.ppl.surrogate import PPLCNN, HashSurrogate

__all__ = [
    "PPL",
    "PPLCNN",
    "HashSurrogate",
    "PerturbationGenerator",
    "affinity_loss",
    "apply_perturbation",
    "matching_loss",
    "median_bandwidth",
    "objective_scale",
    "privacy_loss",
    "project_perturbation",
    "similarity_loss",
    "similarity_matrix",
    "smmd",
]
