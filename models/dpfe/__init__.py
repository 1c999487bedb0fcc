"""DPFE (deep private-feature extraction): networks, losses (eq. 7), privacy measures, noise, the module."""

from models.dpfe.attributes import (
    CELEBA_ATTRIBUTE_SETS,
    FASHION_MNIST_ATTRIBUTE_SETS,
    FASHION_MNIST_ATTRIBUTES,
    attribute_names,
    fashion_mnist_attribute_table,
)
from models.dpfe.losses import attribute_loss, check_features, y_remover_loss
from models.dpfe.module import DPFE, STAGES
from models.dpfe.networks import LinearBottleneck, chain_layers, split_at
from models.dpfe.noise import PAPER_RATIOS, add_feature_noise, feature_covariance
from models.dpfe.privacy import IdentityPrivacy, identity_privacy, silverman_bandwidths

__all__ = [
    "CELEBA_ATTRIBUTE_SETS",
    "DPFE",
    "FASHION_MNIST_ATTRIBUTES",
    "FASHION_MNIST_ATTRIBUTE_SETS",
    "PAPER_RATIOS",
    "STAGES",
    "IdentityPrivacy",
    "LinearBottleneck",
    "add_feature_noise",
    "attribute_loss",
    "attribute_names",
    "chain_layers",
    "check_features",
    "fashion_mnist_attribute_table",
    "feature_covariance",
    "identity_privacy",
    "silverman_bandwidths",
    "split_at",
    "y_remover_loss",
]
