"""Search over released vectors: benchmark data, product quantization, PQ search with an encrypted query.

Method code: imports numpy / torch / faiss / TenSEAL (the last two lazily), never the zoo registry.
"""

from models.search.data import recall_at_k, replicate_public_codes, sca_coefficients
from models.search.encrypted_pq import (
    CKKS_DEFAULTS,
    Packing,
    QueryClient,
    TableServer,
    TrustedProcess,
    TrustedScanner,
    adc_scan,
)
from models.search.pq import ProductQuantizer

__all__ = [
    "CKKS_DEFAULTS",
    "Packing",
    "ProductQuantizer",
    "QueryClient",
    "TableServer",
    "TrustedProcess",
    "TrustedScanner",
    "adc_scan",
    "recall_at_k",
    "replicate_public_codes",
    "sca_coefficients",
]
