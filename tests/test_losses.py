"""The loss formulas against values computed by hand."""

import pytest
import torch

from nst import losses
from nst.losses import (
    content_layer_loss,
    gram,
    self_product,
    squared_error,
    style_layer_loss,
    style_transfer_losses,
    total_variation,
)
from tests.lane import gpu_only


def test_content_loss_matches_hand_computation() -> None:
    # n_C=2, n_H=1, n_W=2: squared errors 1, 4, 0, 9 -> sum 14; / (4*1*2*2) = 16
    gen = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    tgt = torch.tensor([[[[0.0, 0.0]], [[3.0, 1.0]]]])
    assert content_layer_loss(gen, tgt).item() == pytest.approx(14 / 16)


def test_gram_is_symmetric_and_scales_quadratically() -> None:
    x = torch.randn(1, 5, 4, 3, generator=torch.Generator().manual_seed(0))
    g = gram(x)
    assert g.shape == (1, 5, 5)
    torch.testing.assert_close(g, g.transpose(1, 2))
    torch.testing.assert_close(gram(2 * x), 4 * g)
    # G[i, j] is the inner product of channels i and j over all positions.
    assert g[0, 1, 2].item() == pytest.approx((x[0, 1] * x[0, 2]).sum().item(), rel=1e-5)


def test_the_gram_matrix_gradient_is_that_of_the_plain_product() -> None:
    """Its one-product backward (nst.losses.self_product) against finite differences in float64 (on a
    transposed view, as a channels_last map gives it), and the Gram's against autograd's own backward
    of the plain product in float32."""
    x = torch.randn(2, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(self_product, (x.requires_grad_(),))
    assert torch.autograd.gradcheck(self_product, (x.detach().transpose(1, 2).requires_grad_(),))
    features = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    weights = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(2))  # dL/dG, not symmetric
    (ours,) = torch.autograd.grad((gram(features) * weights).sum(), features)
    flat = features.permute(0, 2, 3, 1).reshape(2, 36, 8)
    (plain,) = torch.autograd.grad(((flat.transpose(1, 2) @ flat) * weights).sum(), features)
    torch.testing.assert_close(ours, plain)


def _bf16_map_and_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """A channels_last bf16 map (B, C, H, W), as nst's VGG gives it under bf16, and a dL/dG (not symmetric)."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 16, 12, 10, generator=generator).to(torch.bfloat16)
    return features.to(memory_format=torch.channels_last), torch.randn(2, 16, 16, generator=generator)


def test_a_bf16_maps_product_sums_in_fp32_and_hands_back_a_bf16_gradient(monkeypatch) -> None:
    """The Gram of a bf16 map as a CUDA GPU takes it (bmm's out_dtype: bf16 products summed in fp32), its
    kernel stood in for on this CPU by the same product of fp32 copies: G is the fp32 copy's exactly, and
    dL/dX comes back bf16, as the map is, within bf16's rounding of the fp32 copy's."""
    real_bmm = torch.bmm

    def bmm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        assert a.dtype == b.dtype == torch.bfloat16 and out_dtype == torch.float32  # CUDA's case, and only it
        return real_bmm(a.float(), b.float())

    assert not losses._sums_bf16_into_fp32(torch.device("cpu"))  # no such kernel here: gram copies to fp32
    features, weights = _bf16_map_and_weights()
    flat = features.permute(0, 2, 3, 1).reshape(2, 120, 16)  # gram's view of it
    reference = flat.detach().float().requires_grad_()
    expected = self_product(reference)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), reference)
    monkeypatch.setattr(torch, "bmm", bmm)
    x = flat.detach().requires_grad_()
    g = self_product(x)
    assert g.dtype == torch.float32 and torch.equal(g, expected.detach())
    (grad,) = torch.autograd.grad((g * weights).sum(), x)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), expected_grad, rtol=2e-2, atol=2e-2 * float(expected_grad.abs().max()))


@gpu_only
def test_on_a_gpu_a_bf16_maps_gram_is_the_fp32_copys(monkeypatch) -> None:
    """nst.losses.gram on a CUDA bf16 map (bmm's out_dtype) against the fp32 copy's (the CPU's way, and the
    GPU's before): the same sums but for their order; the gradient within bf16's rounding."""
    features, weights = (t.cuda() for t in _bf16_map_and_weights())
    assert losses._sums_bf16_into_fp32(features.device)  # torch >= 2.8 on CUDA
    results = {}
    for direct in (True, False):
        monkeypatch.setattr(losses, "BF16_PRODUCTS_ON_CUDA", direct)
        x = features.detach().requires_grad_()
        g = gram(x)
        results[direct] = (g.detach(), *torch.autograd.grad((g * weights).sum(), x))
    (g, grad), (g32, grad32) = results[True], results[False]
    torch.testing.assert_close(g, g32, rtol=1e-5, atol=1e-5 * float(g32.abs().max()))
    assert grad.dtype == grad32.dtype == torch.bfloat16  # the copy's gradient is cast back to the map's dtype
    torch.testing.assert_close(grad.float(), grad32.float(), rtol=2e-2, atol=2e-2 * float(grad32.abs().max()))


def test_squared_error_is_the_difference_squared_bit_for_bit() -> None:
    """squared_error (mse_loss's elementwise squares, fewer kernels) against the difference squared and
    summed, forward and backward, bit for bit: a channels_last map against a target of one image, and a
    batch of Gram matrices."""
    generator = torch.Generator().manual_seed(4)
    cases = [(torch.randn(3, 8, 5, 4, generator=generator).to(memory_format=torch.channels_last),
              torch.randn(1, 8, 5, 4, generator=generator)),
             (torch.randn(3, 6, 6, generator=generator) * 1e3, torch.randn(1, 6, 6, generator=generator) * 1e3)]
    for a, b in cases:
        dims = tuple(range(1, a.dim()))
        weights = torch.randn(3, generator=generator)
        ours, plain = a.clone().requires_grad_(), a.clone().requires_grad_()
        e = squared_error(ours, b)
        expected = (plain - b).pow(2).sum(dim=dims)
        assert torch.equal(e, expected)
        (e * weights).sum().backward()
        (expected * weights).sum().backward()
        assert ours.grad is not None and plain.grad is not None and torch.equal(ours.grad, plain.grad)


def test_style_loss_matches_hand_computation() -> None:
    # One position, channels (1, 2): G_G = [[1, 2], [2, 4]]; target zero -> sum 1+4+4+16 = 25
    gen = torch.tensor([[[[1.0]], [[2.0]]]])
    expected = 25 / (4 * 2**2 * 1**2)
    assert style_layer_loss(gen, torch.zeros(1, 2, 2)).item() == pytest.approx(expected)
    assert style_layer_loss(gen, gram(gen)).item() == 0


def test_total_variation_of_a_step_image() -> None:
    image = torch.zeros(1, 3, 2, 2)
    image[..., :, 1] = 1.0  # right column white: every horizontal difference is 1
    assert total_variation(image, "l2").item() == pytest.approx(1.0)
    assert total_variation(image, "l1").item() == pytest.approx(1.0)
    assert total_variation(0.5 * image, "l2").item() == pytest.approx(0.25)
    assert total_variation(0.5 * image, "l1").item() == pytest.approx(0.5)


def test_total_loss_combines_terms_and_names_metrics() -> None:
    gen = {"relu1_1": torch.ones(1, 2, 2, 2), "relu4_2": torch.ones(1, 2, 1, 1)}
    content = {"relu4_2": torch.zeros(1, 2, 1, 1)}
    grams = {"relu1_1": torch.zeros(1, 2, 2)}
    image = torch.rand(1, 3, 4, 4)
    losses = style_transfer_losses(gen, content, grams, {"relu1_1": 0.5}, image, 10.0, 40.0, 2.0)
    assert set(losses) == {"loss/total", "loss/content", "loss/style", "loss/tv", "loss/style/relu1_1"}
    c = 2 / (4 * 1 * 1 * 2)  # two ones against zeros
    s = 0.5 * (4 * 16) / (4 * 4 * 16)  # G = 4 everywhere, 4 entries of 16
    assert losses["loss/content"].item() == pytest.approx(c)
    assert losses["loss/style"].item() == pytest.approx(s)
    tv = total_variation(image).item()
    assert losses["loss/total"].item() == pytest.approx(10 * c + 40 * s + 2 * tv, rel=1e-5)


def test_w2_is_zero_for_the_same_features_and_the_mean_shift_otherwise() -> None:
    """W2 between Gaussians: 0 for the same distribution; a pure shift of the mean costs |shift|^2
    (per channel); scaled features with diagonal covariances cost the difference of the std devs."""
    from nst.losses import feature_moments, w2_layer_loss, w2_target

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 4, 16, 16, generator=generator)
    target = w2_target(*(m[0] for m in feature_moments(features)))
    assert w2_layer_loss(features, target).item() == pytest.approx(0.0, abs=1e-3)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 4, 1, 1)
    assert w2_layer_loss(features + shift, target).item() == pytest.approx((1 + 4 + 0.25) / 4, rel=1e-3)
    independent = torch.zeros(1, 2, 64, 64)
    independent[:, 0] = torch.randn(64, 64, generator=generator)
    independent[:, 1] = 3 * torch.randn(64, 64, generator=generator)
    target = w2_target(*(m[0] for m in feature_moments(independent)))
    moments = feature_moments(2 * independent)  # std devs doubled: W2^2 = sum of (2s - s)^2 = s1^2 + s2^2
    variances = (moments[1][0] - moments[0][0].outer(moments[0][0])).diagonal() / 4
    expected = variances.sum().item() / 2
    assert w2_layer_loss(2 * independent, target).item() == pytest.approx(expected, rel=2e-2)


def test_style_terms_are_per_image_and_weights_may_differ_per_image() -> None:
    gen = {"relu1_1": torch.rand(3, 2, 4, 4), "relu4_2": torch.rand(3, 2, 2, 2)}
    content = {"relu4_2": torch.zeros(1, 2, 2, 2)}
    grams = {"relu1_1": torch.zeros(1, 2, 2)}
    image = torch.rand(3, 3, 8, 8)
    alpha = torch.tensor([1.0, 10.0, 100.0])
    gamma = torch.tensor([0.0, 1.0, 0.0])
    batch = style_transfer_losses(gen, content, grams, {"relu1_1": 0.5}, image, alpha, 40.0, gamma)
    assert batch["loss/total"].shape == (3,)
    assert batch["loss/tv"][0] == 0 and batch["loss/tv"][1] > 0 and batch["loss/tv"][2] == 0  # 0 where gamma is 0
    for b in range(3):
        alone = style_transfer_losses({k: v[b : b + 1] for k, v in gen.items()}, content, grams, {"relu1_1": 0.5},
                                      image[b : b + 1], float(alpha[b]), 40.0, [0.0, 1.0, 0.0][b])
        assert torch.allclose(batch["loss/total"][b], alone["loss/total"][0])
