"""DPFE's public API checks its input images like PPL's and SCA's: dtype, channels, size, range."""

import pytest
import torch

from models.dpfe import DPFE


@pytest.fixture(scope="module")
def model():
    return DPFE(stage="simple", in_chans=1, image_size=28).eval()


def test_valid_images_pass(model):
    x = torch.rand(2, 1, 28, 28)
    assert model.extract(x).shape == (2, 10) and model.predict(x).shape[0] == 2


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), "float tensor in \\[0, 1\\].*/ 255"),
        (torch.rand(2, 3, 28, 28), "1-channel images, got 3 channels"),
        (torch.rand(2, 1, 14, 14), "28x28 images, got 14x14"),
        (torch.rand(1, 28, 28), "must be \\[B, C, H, W\\]"),
        (torch.rand(2, 1, 28, 28) * 255, "must lie in \\[0, 1\\].*divide uint8 images by 255"),
        (torch.full((2, 1, 28, 28), float("inf")), "must lie in \\[0, 1\\]"),
    ],
    ids=["uint8", "channels", "size", "rank", "range", "inf"],
)
def test_bad_images_are_clear_errors(model, x, match):
    for method in (model.extract, model.predict, model):
        with pytest.raises(ValueError, match=match):
            method(x)
