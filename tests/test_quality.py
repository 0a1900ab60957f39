"""Quality measures: identities, bounds and the direction of change."""

import pytest
import torch

from nst.quality import edge_correlation, mean_abs_change, ssim


def _scene() -> torch.Tensor:
    image = torch.zeros(1, 3, 48, 48)
    image[..., 12:36, 12:36] = 1.0  # a white square on black
    return image


def test_identical_images_score_one() -> None:
    image = _scene()
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-5)
    assert edge_correlation(image, image) == pytest.approx(1.0, abs=1e-5)
    assert mean_abs_change(image, image) == 0


def test_noise_lowers_ssim_and_edges_keep_structure() -> None:
    image = _scene()
    noisy = (image + 0.3 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    shifted = torch.roll(image, shifts=12, dims=-1)  # the same square elsewhere
    assert ssim(image, noisy) < 0.5
    assert edge_correlation(image, noisy) > edge_correlation(image, shifted)
    assert mean_abs_change(image, 1 - image) == pytest.approx(255.0)
