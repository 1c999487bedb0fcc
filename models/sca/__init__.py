"""SCA (sparse coding with ambiguation) for privacy-preserving near-neighbour search."""

from models.sca.ambiguation import (
    ambiguate_codes,
    decoy_ambiguate,
    gap_ratios,
    purify,
    sample_complement_tail,
    value_quantiles,
)
from models.sca.index import SupportIntersectionIndex
from models.sca.metrics import NMSE, RecallAtT, intra_inter_kl, pixel_ground_truth, support_probabilities
from models.sca.module import MECHANISMS, SCA, SERVER_ATTACKS
from models.sca.networks import ConvDecoder, ConvEncoder
from models.sca.transform import (
    closed_form_decoder,
    decoder_objective,
    fit_transform,
    random_orthonormal,
    sparsify,
    transform_objective,
)

__all__ = [
    "MECHANISMS",
    "NMSE",
    "SCA",
    "SERVER_ATTACKS",
    "ConvDecoder",
    "ConvEncoder",
    "RecallAtT",
    "SupportIntersectionIndex",
    "ambiguate_codes",
    "closed_form_decoder",
    "decoder_objective",
    "decoy_ambiguate",
    "fit_transform",
    "gap_ratios",
    "intra_inter_kl",
    "pixel_ground_truth",
    "purify",
    "random_orthonormal",
    "sample_complement_tail",
    "sparsify",
    "support_probabilities",
    "transform_objective",
    "value_quantiles",
]
