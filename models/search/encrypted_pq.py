"""Product-quantized search with a CKKS-encrypted query: our reading of the PPPQ-ANN abstract.

PPPQ-ANN (Saeki, Kawahara, Aman) combines product quantization (PQ), fully homomorphic encryption and a
trusted execution environment. There is no public code and the abstract names only the ingredients, so
this is what we built from it, not a reproduction:

* the data owner trains a product quantizer (``M`` sub-spaces of ``dsub = D / M`` dimensions, ``ksub``
  centroids each) and gives the server the PQ codes and the plaintext centroids;
* the client encrypts its query once with CKKS (TenSEAL), packed by :class:`Packing`: slot ``d * W + w``
  holds coordinate ``d`` of the query's sub-vector of window ``w`` (a window is one (sub-space, centroid)
  pair; ``W = slots / dsub`` windows per ciphertext);
* the server holds the public context only (no secret key). For each group of ``W`` windows it multiplies
  the query ciphertext by the plaintext ``-2 c`` of those centroids, sums the ``dsub`` coordinates with
  ``log2(dsub)`` rotations (TenSEAL's ``enc_matmul_plain``) and adds the plaintext ``||c||^2``: the
  encrypted ADC table ``T[m, j] = ||q_m - c_mj||^2 - ||q_m||^2`` (``||q||^2`` is the same for every
  database vector, so it is left out of the ranking);
* a trusted component holds the secret key, decrypts the tables and scans the PQ codes
  (``dist(x) = sum_m T[m, code_m(x)]``) for the top ``k``. Here it is :class:`TrustedProcess`, a separate
  operating-system process: there is no enclave, no attestation and no sealed memory; the process boundary
  only keeps the server's code path away from the key.

The server sees the query's ciphertext and, because the results come back through it, the returned ids.
The trusted component sees the decrypted tables, from which the query can be solved for by least squares
whenever ``ksub >= dsub`` (256 inner products per 8-d sub-vector): it must be trusted with the query.

CKKS defaults: ring degree 8192, coefficient modulus ``60 + 40 + 40 + 60`` bits (200 <= 218, the
homomorphic-encryption standard's bound for 128-bit security at this degree), scale ``2^40``; two
plaintext products per table (centroids, then the rotation sum's all-ones weights).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CKKS_DEFAULTS",
    "Packing",
    "QueryClient",
    "TableServer",
    "TrustedProcess",
    "TrustedScanner",
    "adc_scan",
]

CKKS_DEFAULTS = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 40, 40, 60), "scale_bits": 40}


def _tenseal():
    try:
        import tenseal
    except ImportError as err:  # pragma: no cover - tenseal is in the dev / search extra
        raise ImportError(
            "the encrypted PQ query needs TenSEAL: pip install -e '.[search]' (or `make install`)"
        ) from err
    return tenseal


@dataclass(frozen=True)
class Packing:
    """Slot layout of the query ciphertext and of the server's plaintexts.

    Windows are the ``M * ksub`` (sub-space, centroid) pairs in centroid-major order (pair ``p = j * M + m``);
    group ``g`` holds pairs ``g * W ... (g + 1) * W - 1``. Window ``w`` of every group belongs to sub-space
    ``w % M``, so one query ciphertext serves all groups.

    Args:
        dim: vector length ``D``.
        m: PQ sub-spaces ``M`` (``D % M == 0``).
        ksub: centroids per sub-space.
        slots: CKKS slots (ring degree / 2).
    """

    dim: int
    m: int
    ksub: int
    slots: int

    def __post_init__(self):
        if self.m < 1 or self.dim % self.m:
            raise ValueError(f"dim={self.dim} must be a multiple of the PQ sub-spaces m={self.m}")
        dsub = self.dim // self.m
        if dsub & (dsub - 1):
            raise ValueError(
                f"sub-vectors of {dsub} dims: the rotation sum needs a power of two; choose m with "
                f"dim / m in 1, 2, 4, 8, ..."
            )
        if self.slots % dsub or (self.slots // dsub) % self.m:
            raise ValueError(
                f"{self.slots} slots do not hold whole windows of {dsub} dims for {self.m} sub-spaces; "
                "use a larger ring degree or fewer sub-spaces"
            )
        if self.ksub < 1:
            raise ValueError(f"ksub must be >= 1, got {self.ksub}")

    @property
    def dsub(self) -> int:
        return self.dim // self.m

    @property
    def windows(self) -> int:
        """``W``: windows (table entries) per ciphertext."""
        return self.slots // self.dsub

    @property
    def groups(self) -> int:
        """Ciphertexts per table."""
        return math.ceil(self.m * self.ksub / self.windows)

    def pairs(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sub-space [W], centroid [W], valid [W])`` of the windows of ``group``."""
        p = group * self.windows + np.arange(self.windows)
        valid = p < self.m * self.ksub
        return p % self.m, np.minimum(p // self.m, self.ksub - 1), valid

    def query_slots(self, query: np.ndarray) -> np.ndarray:
        """The client's packed query ``[slots]``: slot ``d * W + w`` = ``q[(w % M) * dsub + d]``."""
        q = np.asarray(query, dtype=np.float64).reshape(self.m, self.dsub)
        sub = np.arange(self.windows) % self.m
        return q[sub].T.reshape(-1)  # [dsub, W] -> d-major

    def server_plaintexts(self, centroids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group: ``-2 c`` packed like the query ``[slots]``, and ``||c||^2`` ``[W]`` (0: unused)."""
        c = np.asarray(centroids, dtype=np.float64)
        if c.shape != (self.m, self.ksub, self.dsub):
            raise ValueError(
                f"centroids must be [m, ksub, dsub] = {(self.m, self.ksub, self.dsub)}, got {c.shape}"
            )
        out = []
        for g in range(self.groups):
            sub, cent, valid = self.pairs(g)
            cw = c[sub, cent] * valid[:, None]  # [W, dsub]
            out.append(((-2 * cw).T.reshape(-1), (cw**2).sum(1)))
        return out

    def unpack_tables(self, groups: list[np.ndarray]) -> np.ndarray:
        """Decrypted group outputs (``[>= W]`` each) -> the table ``[M, ksub]``."""
        flat = np.concatenate([np.asarray(v[: self.windows]) for v in groups])[: self.m * self.ksub]
        return flat.reshape(self.ksub, self.m).T.copy()


class QueryClient:
    """The client: owns the CKKS secret key, encrypts packed queries.

    Args:
        packing: the layout shared with the server.
        poly_modulus_degree, coeff_mod_bit_sizes, scale_bits: CKKS parameters (:data:`CKKS_DEFAULTS`).
    """

    def __init__(
        self,
        packing: Packing,
        poly_modulus_degree: int = CKKS_DEFAULTS["poly_modulus_degree"],
        coeff_mod_bit_sizes: tuple[int, ...] = CKKS_DEFAULTS["coeff_mod_bit_sizes"],
        scale_bits: int = CKKS_DEFAULTS["scale_bits"],
    ):
        ts = _tenseal()
        if poly_modulus_degree // 2 != packing.slots:
            raise ValueError(
                f"packing has {packing.slots} slots but ring degree {poly_modulus_degree} gives "
                f"{poly_modulus_degree // 2}; build Packing(slots=poly_modulus_degree // 2)"
            )
        self.packing = packing
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS, poly_modulus_degree, coeff_mod_bit_sizes=list(coeff_mod_bit_sizes)
        )
        self.context.global_scale = 2.0**scale_bits
        self.context.generate_galois_keys()

    def public_context(self) -> bytes:
        """What the server gets: public + Galois keys, no secret key."""
        return self.context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True)

    def secret_context(self) -> bytes:
        """What the trusted component gets: the secret key (in PPPQ-ANN, after attesting the enclave)."""
        return self.context.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False)

    def encrypt(self, query: np.ndarray) -> bytes:
        """The serialized ciphertext of one query ``[D]``."""
        ts = _tenseal()
        if np.asarray(query).size != self.packing.dim:
            raise ValueError(f"query has {np.asarray(query).size} values, the index holds {self.packing.dim}")
        return ts.ckks_vector(self.context, self.packing.query_slots(query).tolist()).serialize()


class TableServer:
    """The untrusted server: plaintext centroids, public context; computes encrypted ADC tables.

    Args:
        packing: the layout.
        centroids: ``[M, ksub, dsub]`` PQ centroids (plaintext).
        public_context: :meth:`QueryClient.public_context`.
    """

    def __init__(self, packing: Packing, centroids: np.ndarray, public_context: bytes):
        ts = _tenseal()
        self.context = ts.context_from(public_context)
        if self.context.has_secret_key():
            raise ValueError("the server was given a context with the secret key; pass public_context()")
        self.packing = packing
        self._plain = [(p.tolist(), n.tolist()) for p, n in packing.server_plaintexts(centroids)]
        self._ones = [1.0] * packing.dsub

    def tables(self, encrypted_query: bytes) -> list[bytes]:
        """Encrypted ``T[m, j] = ||c_mj||^2 - 2 <q_m, c_mj>``, one ciphertext per group (serialized)."""
        ts = _tenseal()
        q = ts.ckks_vector_from(self.context, encrypted_query)
        out = []
        for minus_two_c, norms in self._plain:
            # <q_m, -2 c_mj> summed over the dsub coordinates by rotations, + ||c_mj||^2
            t = (q * minus_two_c).enc_matmul_plain(self._ones, self.packing.windows) + norms
            out.append(t.serialize())
        return out


def adc_scan(onehot: torch.Tensor, tables: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of ``dist(x) = sum_m T[m, code_m(x)]`` (asymmetric distance computation).

    Args:
        onehot: ``[n, M * ksub]`` sparse CSR one-hot of the PQ codes (:meth:`TrustedScanner.onehot`).
        tables: ``[B, M, ksub]`` distance tables.
        k: results per query.

    Returns:
        ``(dist [B, k], ids [B, k])`` sorted by distance.
    """
    dist = onehot @ tables.reshape(tables.shape[0], -1).T.float()  # [n, B]
    k = min(k, dist.shape[0])
    d, i = dist.topk(k, dim=0, largest=False)
    return d.T.contiguous(), i.T.contiguous()


class TrustedScanner:
    """The trusted component: decrypts tables with the secret key, scans the PQ codes.

    Args:
        packing: the layout.
        codes: ``[n, M]`` PQ codes (integers ``< ksub``).
        secret_context: :meth:`QueryClient.secret_context`.
    """

    def __init__(self, packing: Packing, codes: np.ndarray, secret_context: bytes):
        ts = _tenseal()
        self.context = ts.context_from(secret_context)
        if not self.context.has_secret_key():
            raise ValueError("the trusted component needs the secret key; pass secret_context()")
        self.packing = packing
        self.onehot = self.make_onehot(codes, packing.m, packing.ksub)

    @staticmethod
    def make_onehot(codes: np.ndarray, m: int, ksub: int) -> torch.Tensor:
        """``[n, m * ksub]`` sparse CSR float32, one 1 per sub-space per row (int32 indices)."""
        c = torch.as_tensor(np.asarray(codes)).long()
        if c.dim() != 2 or c.shape[1] != m:
            raise ValueError(f"codes must be [n, {m}], got {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= ksub):
            raise ValueError(f"codes must lie in [0, {ksub}), got [{int(c.min())}, {int(c.max())}]")
        n = c.shape[0]
        cols = (c + torch.arange(m) * ksub).reshape(-1).int()
        crow = (torch.arange(n + 1) * m).int()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            return torch.sparse_csr_tensor(
                crow, cols, torch.ones(n * m), (n, m * ksub), check_invariants=False
            )

    def decrypt(self, groups: list[bytes]) -> np.ndarray:
        """Serialized group ciphertexts -> the plaintext table ``[M, ksub]``."""
        ts = _tenseal()
        return self.packing.unpack_tables([ts.ckks_vector_from(self.context, g).decrypt() for g in groups])

    def search(self, batch: list[list[bytes]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Encrypted tables of ``B`` queries -> ``(dist [B, k], ids [B, k])``."""
        tables = torch.as_tensor(np.stack([self.decrypt(g) for g in batch]))
        d, i = adc_scan(self.onehot, tables, k)
        return d.numpy(), i.numpy()


def _trusted_main(conn, packing: Packing, codes: np.ndarray, secret_context: bytes, threads: int) -> None:
    torch.set_num_threads(threads)
    scanner = TrustedScanner(packing, codes, secret_context)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            break
        if msg[0] == "threads":
            torch.set_num_threads(msg[1])
            continue
        _, batch, k = msg
        conn.send(scanner.search(batch, k))
    conn.close()


class TrustedProcess:
    """:class:`TrustedScanner` in a separate process (a simulated trusted component: no enclave).

    Use as a context manager; :meth:`submit` sends a batch without waiting, so the server can compute the
    next batch's tables while this one is scanned; :meth:`receive` returns results in submission order.

    Args:
        packing, codes, secret_context: as :class:`TrustedScanner`.
        threads: torch threads of the process.
    """

    def __init__(self, packing: Packing, codes: np.ndarray, secret_context: bytes, threads: int = 1):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_trusted_main,
            args=(child, packing, np.asarray(codes), secret_context, threads),
            daemon=True,
        )
        self._proc.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("the trusted process did not start")

    def submit(self, batch: list[list[bytes]], k: int) -> None:
        self._conn.send(("search", batch, k))

    def receive(self) -> tuple[np.ndarray, np.ndarray]:
        return self._conn.recv()

    def search(self, batch: list[list[bytes]], k: int) -> tuple[np.ndarray, np.ndarray]:
        self.submit(batch, k)
        return self.receive()

    def set_threads(self, threads: int) -> None:
        """torch threads of the scan (takes effect for the next batch)."""
        self._conn.send(("threads", int(threads)))

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("close",))
            self._proc.join(timeout=30)
        self._conn.close()

    def __enter__(self) -> TrustedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
