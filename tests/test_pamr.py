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


def test_refining_a_dilation_and_a_few_texts_at_a_time_equals_all_at_once():
    """The iteration summed over all 48 neighbours of the 6 dilations at once (the official form)
    against ours, a dilation at a time and in chunks of texts: the same masks to float rounding."""
    torch.manual_seed(1)
    pamr = PAMR()
    image, masks = torch.rand(2, 3, 20, 28), torch.rand(2, 7, 20, 28)
    weights = pamr.affinity(image)
    reference = masks
    for _ in range(pamr.num_iterations):
        reference = (pamr._gather(reference, pamr.neighbours) * weights).sum(dim=2)
    for chunk_elements in (1 << 26, 2 * 8 * 20 * 28 * 3):  # everything at once; three texts at a time
        assert torch.allclose(pamr(image, masks, chunk_elements=chunk_elements), reference, atol=1e-5)
