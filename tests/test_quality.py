"""Quality measures: identities, bounds and the direction of change."""

import pytest
import torch
import torch.nn.functional as F

from nst.quality import edge_correlation, luminance, mean_abs_change, ssim


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


def test_ssim_is_wang_et_als_mean_over_the_windows_inside_the_image() -> None:
    # The definition written out: an 11 x 11 Gaussian window (sigma 1.5) slid over the image without padding,
    # the SSIM of each position averaged. torchmetrics computes the map; its own mean also counts the border
    # it pads by reflection, which would move every SSIM nst has published (0.22 against 0.36 here).
    image = _scene()
    noisy = (image + 0.3 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    x, y = luminance(image), luminance(noisy)
    g = torch.exp(-((torch.arange(11.0) - 5) ** 2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x, var_y = F.conv2d(x * x, window) - mu_x**2, F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))).mean()
    assert ssim(image, noisy) == pytest.approx(float(expected), abs=1e-5)
