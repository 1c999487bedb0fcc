"""Supervised deep hashing victims of the PPL evaluation: ADSH (AAAI 2018) and DSDH (NIPS 2017)."""

from models.hashing.adsh import ADSH, adsh_dcc_update, adsh_v_objective
from models.hashing.base import HashingModule, label_similarity, sign_codes
from models.hashing.dsdh import DSDH, dsdh_b_objective, dsdh_dcc_update, dsdh_w_update

__all__ = [
    "ADSH",
    "DSDH",
    "HashingModule",
    "adsh_dcc_update",
    "adsh_v_objective",
    "dsdh_b_objective",
    "dsdh_dcc_update",
    "dsdh_w_update",
    "label_similarity",
    "sign_codes",
]
