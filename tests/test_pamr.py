import torch
import torch.nn.functional as F

from tcl.pamr import PAMR


def test_constant_mask_stays_constant():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 24, 24)
    masks = torch.full((1, 2, 24, 24), 0.37)
    refined = PAMR()(image, masks)
    assert torch.allclose(refined, masks, atol=1e-5)


def test_blurred_boundary_moves_toward_the_image_edge():
    # Image: left 20 columns dark, right 20 bright. Mask: a soft ramp centred on the wrong
    # column (the boundary blurred and shifted by a few pixels).
    height, width, edge = 16, 40, 20
    image = torch.zeros(1, 3, height, width)
    image[..., edge:] = 1.0
    columns = torch.arange(width, dtype=torch.float)
    mask = torch.sigmoid((columns - (edge - 4)) / 3.0).expand(1, 1, height, width).clone()
    target = (columns >= edge).float().expand(1, 1, height, width)
    refined = PAMR()(image, mask)  # the evaluation's settings
    band = slice(edge - 6, edge + 6)  # the blurred, misplaced boundary
    assert (refined - target)[..., band].abs().mean() < 0.5 * (mask - target)[..., band].abs().mean()
    # the 0.5 crossing moved right, onto the edge
    def crossing(m: torch.Tensor) -> int:
        return int((m[0, 0, height // 2] > 0.5).float().argmax())
    assert abs(crossing(refined) - edge) < abs(crossing(mask) - edge)


def test_masks_keep_their_resolution_and_image_is_resized():
    image = torch.rand(2, 3, 64, 48)
    masks = torch.rand(2, 5, 16, 12)
    refined = PAMR()(image, masks)
    assert refined.shape == masks.shape
    assert refined.min() >= masks.min() - 1e-6 and refined.max() <= masks.max() + 1e-6  # convex averages
    assert not torch.allclose(refined, F.interpolate(masks, size=(16, 12)))


def direct_pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = 10, dilations=(1, 2, 4, 8, 12, 24)) -> torch.Tensor:
    """PAMR from its definition, by clamped indices (what replicate padding means), in float64:
    the official code's terms (models/tcl/pamr.py of the TCL code, from visinf/1-stage-wseg: LocalStDev,
    LocalAffinityAbs, LocalAffinityCopy, PAMR.forward; apply_pamr in models/tcl/tcl.py resizes the
    image to the masks, bilinear with align_corners=True): local std over the 3x3
    neighbourhood incl. the centre at every dilation, -|I_i - I_j| / (1e-8 + 0.1 std) averaged over
    the colour channels, softmax over the 8 x dilations neighbours, then `iterations` weighted averages."""
    height, width = masks.shape[-2:]
    image = F.interpolate(image.double(), size=(height, width), mode="bilinear", align_corners=True)
    rows, cols = torch.arange(height), torch.arange(width)

    def at(x, dy, dx):
        return x[..., (rows + dy).clamp(0, height - 1), :][..., (cols + dx).clamp(0, width - 1)]

    around = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    neighbours = [(dy * d, dx * d) for d in dilations for dy, dx in around if (dy, dx) != (0, 0)]
    std = torch.stack([at(image, dy * d, dx * d) for d in dilations for dy, dx in around], dim=2).std(dim=2)
    logits = torch.stack([-(at(image, dy, dx) - image).abs() / (1e-8 + 0.1 * std) for dy, dx in neighbours], dim=2)
    weights = logits.mean(dim=1).softmax(dim=1)  # [B, P, H, W]
    masks = masks.double()
    for _ in range(iterations):
        masks = sum(weights[:, k:k + 1] * at(masks, dy, dx) for k, (dy, dx) in enumerate(neighbours))
    return masks


def test_refinement_equals_the_direct_definition_in_any_chunking():
    """Ours (shifted views of one padded copy, texts in chunks) against the clamped-index form: the
    same masks to float32 rounding, also where the largest dilation exceeds the mask (16 x 12)."""
    torch.manual_seed(1)
    pamr = PAMR()
    for size in ((20, 28), (16, 12)):
        image, masks = torch.rand(2, 3, *size), torch.rand(2, 7, *size)
        reference = direct_pamr(image, masks)
        padded = (size[0] + 48) * (size[1] + 48)
        for chunk_elements in (1 << 26, 2 * padded * 3):  # everything at once; three texts at a time
            refined = pamr(image, masks, chunk_elements=chunk_elements)
            assert refined.dtype == torch.float32
            assert torch.allclose(refined.double(), reference, atol=1e-5), (size, chunk_elements)
        assert not torch.allclose(reference, masks.double(), atol=1e-2)  # the refinement did something


def test_weights_are_a_softmax_over_the_neighbours():
    weights = PAMR().affinity(torch.rand(1, 3, 10, 9))
    assert weights.shape == (1, 48, 10, 9)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 10, 9)) and weights.min() > 0
