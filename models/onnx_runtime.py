"""onnxruntime on one CPU thread, shared by the methods' ONNX exports (DPFE's extractor, SCA's client)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["cpu_session", "mean_latency_ms"]


def cpu_session(path: str | Path):
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU provider with one intra-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def mean_latency_ms(
    path: str | Path, feeds: dict[str, np.ndarray], outputs=None, runs: int = 200, warmup: int = 20
) -> float:
    """Mean wall time of ``runs`` runs of ``path`` on ``feeds`` (after ``warmup`` runs), in milliseconds."""
    session = cpu_session(path)
    for _ in range(warmup):
        session.run(outputs, feeds)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(outputs, feeds)
    return (time.perf_counter() - start) / runs * 1e3
