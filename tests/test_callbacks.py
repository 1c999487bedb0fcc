import numpy as np
import pytest
import torch

from callbacks import to_uint8_grid


def test_grid_is_uint8_hwc_and_scaled():
    images = torch.zeros(4, 1, 8, 8)
    images[0] = 1.0
    images[1] = 0.5
    grid = to_uint8_grid(images, nrow=2)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.max() == 255 and (grid == 128).any()
    rgb = to_uint8_grid(torch.rand(3, 3, 5, 5) * 2 - 0.5)  # clipped into [0, 255]
    assert rgb.dtype == np.uint8


def test_grid_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        to_uint8_grid(torch.rand(2, 8, 8))
