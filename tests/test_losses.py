"""TCL losses against independent hand computations on small tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from tcl import losses


def _cross_entropy(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm() * b.norm()))


def test_info_nce_matches_hand_computation():
    torch.manual_seed(0)
    image, text, scale = torch.randn(3, 4), torch.randn(3, 4), 5.0
    sim = [[_cosine(image[i], text[j]) * scale for j in range(3)] for i in range(3)]
    per_image = sum(_cross_entropy(sim[i], i) for i in range(3)) / 3
    per_text = sum(_cross_entropy([sim[i][j] for i in range(3)], j) for j in range(3)) / 3
    expected = 0.5 * (per_image + per_text)
    assert losses.info_nce(image, text, torch.tensor(scale)).item() == pytest.approx(expected, rel=1e-5)


def test_area_loss_and_total_variation_by_hand():
    mask = torch.tensor([[[[0.0, 1.0, 0.5], [1.0, 1.0, 0.5]]]])  # [1, 1, 2, 3], mean 4/6
    assert losses.area_loss(mask, 0.4).item() == pytest.approx(abs(4 / 6 - 0.4))
    assert losses.area_loss(mask, 0.0).item() == pytest.approx(4 / 6)
    # horizontal |diffs|: row0 1, 0.5; row1 0, 0.5 -> mean 0.5; vertical: 1, 0, 0 -> mean 1/3
    assert losses.total_variation(mask).item() == pytest.approx(0.5 + 1 / 3)
    assert losses.total_variation(torch.ones(2, 3, 4, 5)).item() == 0.0


def test_masked_average_pool_by_hand():
    dense = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).reshape(2, 3, 2, 2)  # [B, C, H, W]
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]]] * 2)  # [B, N=2, H, W]
    pooled = losses.masked_average_pool(dense, masks, eps=0.0)
    for b in range(2):
        for n in range(2):
            weights = masks[b, n] / masks[b, n].sum()
            expected = [(dense[b, c] * weights).sum().item() for c in range(3)]
            assert pooled[b, n].tolist() == pytest.approx(expected)


def test_feature_level_tcl_by_hand():
    torch.manual_seed(1)
    batch, channels = 3, 4
    dense = torch.randn(batch, channels, 2, 3)
    masks = torch.rand(batch, batch, 2, 3)
    text = torch.randn(batch, channels)
    scale = 7.0
    region = [[(dense[i] * (masks[i, j] / (masks[i, j].sum() + 1e-6))).sum(dim=(1, 2)) for j in range(batch)] for i in range(batch)]
    sim = [[_cosine(region[i][j], text[j]) * scale for j in range(batch)] for i in range(batch)]
    per_image = sum(_cross_entropy(sim[i], i) for i in range(batch)) / batch
    per_text = sum(_cross_entropy([sim[i][j] for i in range(batch)], j) for j in range(batch)) / batch
    got = losses.feature_level_tcl(dense, masks, text, torch.tensor(scale)).item()
    assert got == pytest.approx(0.5 * (per_image + per_text), rel=1e-5)


def test_gumbel_straight_through_is_binary_forward_and_soft_backward():
    torch.manual_seed(2)
    logits = torch.randn(4, 5, requires_grad=True)
    noise = torch.randn(4, 5)
    weights = torch.randn(4, 5)
    hard = losses.gumbel_sigmoid_straight_through(logits, tau=0.7, noise=noise)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, ((logits + noise) / 0.7 > 0).float())
    (hard * weights).sum().backward()
    soft_logits = logits.detach().clone().requires_grad_(True)
    (torch.sigmoid((soft_logits + noise) / 0.7) * weights).sum().backward()
    assert torch.allclose(logits.grad, soft_logits.grad)
    # without fixed noise the sample is random but still binary
    sample = losses.gumbel_sigmoid_straight_through(torch.zeros(1000))
    assert set(sample.unique().tolist()) == {0.0, 1.0}


def test_image_level_tcl_sends_gradient_through_frozen_encoder_into_mask():
    torch.manual_seed(3)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6)).requires_grad_(False)
    images = torch.randn(3, 3, 8, 8)
    masks = torch.ones(3, 1, 4, 4, requires_grad=True)  # upsampled x2 to the image
    loss = losses.image_level_tcl(images, masks, torch.randn(3, 6), encoder, torch.tensor(10.0))
    loss.backward()
    assert masks.grad is not None and masks.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())


def test_tcl_loss_total_is_weighted_sum_of_components():
    torch.manual_seed(4)
    criterion = losses.TCLLoss()
    images = torch.randn(2, 3, 16, 16)
    dense = torch.randn(2, 8, 4, 4)
    logits = torch.randn(2, 2, 4, 4)
    text = torch.randn(2, 8)
    encoder = lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 3)[:, :8]  # noqa: E731
    out = criterion(images, dense, logits, text, encoder)
    c = criterion.config
    expected = (
        c.tcl_weight * (out["image_level_tcl"] + out["feature_level_tcl"])
        + c.area_weight * (out["area_positive"] + out["area_negative"])
        + c.tv_weight * (out["tv_mask"] + out["tv_embedding"])
    )
    assert out["total"].item() == pytest.approx(expected.item())
    soft = torch.sigmoid(logits)
    assert out["area_positive"].item() == pytest.approx(abs(torch.stack([soft[0, 0], soft[1, 1]]).mean().item() - 0.4), rel=1e-5)
    assert out["area_negative"].item() == pytest.approx(torch.stack([soft[0, 1], soft[1, 0]]).mean().item(), rel=1e-5)
    assert criterion.image_level_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
