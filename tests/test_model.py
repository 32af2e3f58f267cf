"""Grounder, frozen CLIP taps, decoder, gradients and the distributed loss."""
import os

import pytest
import torch
import torch.nn.functional as F

from tcl.clip import CLIPConfig, FrozenCLIP, interpolate_positional_embedding, self_only_attention_block, tiny_model_cfg
from tcl.decoder import GroundingDecoder
from tcl.model import TCL, TCLConfig, cosine_similarity_maps
from tests.helpers import make_grounder, tiny_grounder_config


@pytest.mark.parametrize("size", [(32, 32), (48, 32), (40, 72), (16, 8)])
def test_dense_feature_shapes_for_any_input_size(grounder, size):
    images = torch.randn(2, 3, *size)
    penultimate, grid = grounder.clip.penultimate_tokens(images)
    assert grid == (size[0] // 8, size[1] // 8)
    assert penultimate.shape == (2, 1 + grid[0] * grid[1], 32)
    assert grounder.clip.dense_embedding(penultimate, grid).shape == (2, 32, *grid)
    assert grounder.grounded_embedding(penultimate, grid).shape == (2, 32, grid[0] * 4, grid[1] * 4)
    masks = grounder.predict_masks(images, torch.randn(5, 32))
    assert masks.shape == (2, 5, size[0] // 2, size[1] // 2)
    assert masks.min() >= 0 and masks.max() <= 1


def test_input_not_multiple_of_patch_size_is_a_clear_error(grounder):
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        grounder.clip.penultimate_tokens(torch.randn(1, 3, 30, 32))


def test_positional_embedding_interpolation():
    pos = torch.randn(1 + 4 * 4, 6)
    assert interpolate_positional_embedding(pos, (4, 4), (4, 4)) is pos
    resized = interpolate_positional_embedding(pos, (4, 4), (2, 6))
    assert resized.shape == (1 + 12, 6)
    assert torch.equal(resized[0], pos[0])  # class token untouched
    constant = torch.ones(1 + 16, 3)
    assert torch.allclose(interpolate_positional_embedding(constant, (4, 4), (7, 3)), torch.ones(22, 3), atol=1e-5)


def test_global_embedding_at_native_size_equals_open_clip(grounder):
    images = torch.randn(2, 3, 32, 32)
    expected = grounder.clip.model.encode_image(images)
    assert torch.allclose(grounder.clip.encode_image(images), expected, atol=1e-5)


def test_self_only_attention_equals_diagonal_attention_mask(grounder):
    block = grounder.clip.last_block
    x = torch.randn(2, 5, 32)
    mask = torch.full((5, 5), float("-inf"))
    mask.fill_diagonal_(0.0)
    assert torch.allclose(self_only_attention_block(block, x), block(x, attn_mask=mask), atol=1e-5)


def test_grounder_starts_from_clip_copies(grounder):
    clip_block = grounder.clip.last_block.state_dict()
    for key, value in grounder.self_only_block.state_dict().items():
        assert torch.equal(value, clip_block[key])
        assert value.data_ptr() != clip_block[key].data_ptr()  # a copy, not shared
    assert torch.equal(grounder.proj, grounder.clip.visual.proj)
    # decoder is the identity at init, so the grounder's embedding is CLIP's dense embedding upsampled
    images = torch.randn(1, 3, 32, 40)
    penultimate, grid = grounder.clip.penultimate_tokens(images)
    expected = F.interpolate(grounder.clip.dense_embedding(penultimate, grid), scale_factor=4, mode="nearest")
    assert torch.allclose(grounder.grounded_embedding(penultimate, grid), expected, atol=1e-5)


def test_decoder_is_identity_at_init_and_not_after_gates_open():
    torch.manual_seed(0)
    decoder = GroundingDecoder(channels=8, num_stages=2)
    x = torch.randn(2, 8, 3, 5)
    out = decoder(x)
    assert out.shape == (2, 8, 12, 20)
    assert torch.equal(out, F.interpolate(x, scale_factor=4, mode="nearest"))
    with torch.no_grad():
        for stage in decoder:
            stage.block1.gate.fill_(1.0)
    assert not torch.allclose(decoder(x), F.interpolate(x, scale_factor=4, mode="nearest"))


def test_mask_eq5_initial_values(grounder):
    assert grounder.mask_weight.item() == 10.0 and grounder.mask_bias.item() == -2.5
    dense = torch.randn(1, 32, 2, 2)
    text = dense[0, :, 0, 0].unsqueeze(0)  # cos = 1 at pixel (0, 0)
    logits = grounder.mask_logits(dense, text)
    assert logits[0, 0, 0, 0].item() == pytest.approx(10.0 - 2.5, abs=1e-5)


def test_cosine_maps_equal_normalising_both_sides_in_value_and_gradient():
    """Pixels divided by their norms after the product equal F.normalize on both sides (the
    official form), gradients included, and a zero pixel gives 0 (F.normalize's clamp), not NaN."""
    torch.manual_seed(0)
    dense = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    dense[1, :, 2, 3] = 0.0
    text = torch.randn(3, 16, dtype=torch.float64)
    ours_input, reference_input = dense.clone().requires_grad_(), dense.clone().requires_grad_()
    ours = cosine_similarity_maps(ours_input, text)
    reference = torch.einsum("bchw,nc->bnhw", F.normalize(reference_input, dim=1), F.normalize(text, dim=-1))
    assert torch.allclose(ours, reference, atol=1e-12) and ours[1, :, 2, 3].abs().max() == 0
    weights = torch.randn_like(reference)
    (ours * weights).sum().backward()
    (reference * weights).sum().backward()
    assert torch.allclose(ours_input.grad, reference_input.grad, atol=1e-12)
    # bf16 maps give bf16 similarities, as the product (normalising first) did: no float32 copy
    bf16 = cosine_similarity_maps(dense.to(torch.bfloat16), text.float())
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.double(), reference, atol=2e-2)


def test_knowledge_preservation_mix(grounder):
    images = torch.randn(1, 3, 32, 32)
    text = torch.randn(3, 32)
    grounded = grounder.predict_masks(images, text, kp_weight=0.0)
    baseline = grounder.predict_masks(images, text, kp_weight=1.0)
    mixed = grounder.predict_masks(images, text, kp_weight=0.3)
    assert torch.allclose(mixed, 0.3 * baseline + 0.7 * grounded, atol=1e-6)
    # the KP term is sigmoid((cos - 0.25) * 10) of frozen CLIP's dense features
    penultimate, grid = grounder.clip.penultimate_tokens(images)
    cos = torch.einsum("bchw,nc->bnhw", F.normalize(grounder.clip.dense_embedding(penultimate, grid), dim=1), F.normalize(text, dim=-1))
    expected = F.interpolate(torch.sigmoid((cos - 0.25) * 10), size=(16, 16), mode="bilinear")
    assert torch.allclose(baseline, expected, atol=1e-6)


def _tcl(unfreeze_block_step: int) -> TCL:
    torch.manual_seed(0)
    return TCL(TCLConfig(grounder=tiny_grounder_config(), unfreeze_block_step=unfreeze_block_step))


def _backward(model: TCL) -> None:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    tokens = model.grounder.clip.tokenize(["a red star", "two rings", "brick wall"])
    model.zero_grad()
    model(images, tokens)["total"].backward()


def test_gradients_reach_trainable_parts_and_never_clip():
    model = _tcl(unfreeze_block_step=100)
    _backward(model)
    grounder = model.grounder
    for name, p in grounder.grounding_decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for p in (grounder.mask_weight, grounder.mask_bias, grounder.proj, model.criterion.image_level_logit_scale,
              model.criterion.feature_level_logit_scale, *grounder.ln_post.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in grounder.self_only_block.parameters())  # frozen before the unfreeze step
    assert all(p.grad is None and not p.requires_grad for p in grounder.clip.parameters())

    assert model.apply_schedule(99) is False
    assert model.apply_schedule(100) is True  # unfreeze changes the trainable set
    assert model.apply_schedule(101) is False
    _backward(model)
    assert all(p.grad is not None for p in grounder.self_only_block.parameters())
    assert all(p.grad is None for p in grounder.clip.parameters())


def test_image_level_loss_gradient_flows_through_frozen_encoder():
    """With every other loss switched off, the mask parameters still get gradient: only possible
    through the masked image re-encoded by the frozen CLIP."""
    model = _tcl(unfreeze_block_step=0)
    model.criterion.config.area_weight = 0.0
    model.criterion.config.tv_weight = 0.0
    images = torch.randn(3, 3, 32, 32)
    tokens = model.grounder.clip.tokenize(["a", "b", "c"])
    losses = model(images, tokens)
    losses["image_level_tcl"].backward()
    assert model.grounder.mask_weight.grad is not None and model.grounder.mask_weight.grad != 0
    assert all(p.grad is None for p in model.grounder.clip.parameters())


def test_training_step_reduces_loss_on_a_fixed_batch():
    model = _tcl(unfreeze_block_step=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(5)
    images = torch.randn(4, 3, 32, 32)
    tokens = model.grounder.clip.tokenize(["a red star", "two rings", "brick wall", "sky"])
    first = None
    for _ in range(15):
        torch.manual_seed(6)  # same Gumbel noise every step
        loss = model(images, tokens)["total"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and loss.item() < first


def test_unknown_model_name_and_missing_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope-16'"):
        FrozenCLIP(CLIPConfig(model_name="ViT-Nope-16", pretrained=None))
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        FrozenCLIP(CLIPConfig(model_name="tiny", pretrained=missing, model_cfg=tiny_model_cfg()))
    with pytest.raises(ValueError, match="ViT image tower"):
        FrozenCLIP(CLIPConfig(model_name="RN50", pretrained=None))


def test_named_open_clip_model_builds_with_local_checkpoint(tmp_path):
    """The real loading path: an open_clip model name plus a local checkpoint file."""
    import open_clip
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-S-32-alt", pretrained=None) if "ViT-S-32-alt" in open_clip.list_models() else None
    if reference is None:
        pytest.skip("ViT-S-32-alt not in this open_clip")
    path = tmp_path / "clip.pt"
    torch.save(reference.state_dict(), path)
    clip = FrozenCLIP(CLIPConfig(model_name="ViT-S-32-alt", pretrained=str(path)))
    for key, value in reference.state_dict().items():
        assert torch.equal(clip.model.state_dict()[key], value)


# ---- distributed: the loss on 2 workers equals the loss on one process with the whole batch ----

def _run_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    import tcl.losses as losses
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    losses_out, grads = _loss_and_grads(rank, world_size, losses)
    for name, grad in grads.items():
        dist.all_reduce(grad)
        grad /= world_size  # what DDP does
    torch.save({"losses": losses_out, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _loss_and_grads(rank: int, world_size: int, losses_module) -> tuple[dict, dict]:
    # zero Gumbel noise so both runs draw the same binary masks
    original = losses_module.gumbel_sigmoid_straight_through
    losses_module.gumbel_sigmoid_straight_through = lambda logits, tau=1.0, noise=None: original(logits, tau, torch.zeros_like(logits))
    model = _tcl(unfreeze_block_step=0)
    torch.manual_seed(7)
    images = torch.randn(4, 3, 32, 32)
    tokens = model.grounder.clip.tokenize(["a red star", "two rings", "brick wall", "sky"])
    per_rank = 4 // world_size
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    out = model(images[part], tokens[part])
    out["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    losses_module.gumbel_sigmoid_straight_through = original
    return {k: v.item() for k, v in out.items()}, grads


def test_distributed_loss_and_gradients_equal_single_process(tmp_path):
    import tcl.losses as losses
    import torch.multiprocessing as mp

    single_losses, single_grads = _loss_and_grads(0, 1, losses)
    mp.spawn(_run_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, value in single_losses.items():
        mean = sum(r["losses"][name] for r in ranks) / 2
        assert mean == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert set(ranks[0]["grads"]) == set(single_grads)
    for name, grad in single_grads.items():
        assert torch.allclose(ranks[0]["grads"][name], grad, rtol=1e-3, atol=1e-6), name


def test_weight_decay_groups_follow_the_official_rule():
    """kakaobrain/tcl utils/optimizer.py:13: no decay iff the parameter is 1-D or its name ends in
    ".bias"; so 0-dim scalars (gates, Eq. 5's w and b, the loss temperatures) decay."""
    from tcl.training import param_groups

    model = _tcl(unfreeze_block_step=0)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    for scalar in ("grounder.mask_weight", "grounder.mask_bias", "grounder.grounding_decoder.0.block1.gate",
                   "criterion.image_level_logit_scale", "criterion.feature_level_logit_scale"):
        assert scalar in decayed
    for name in ("grounder.self_only_block.attn.in_proj_bias", "grounder.ln_post.weight", "grounder.grounding_decoder.1.block2.norm.bias",
                 "grounder.grounding_decoder.1.block2.conv.bias"):
        assert name in exempt
    assert {"grounder.proj", "grounder.self_only_block.attn.in_proj_weight", "grounder.grounding_decoder.0.block1.conv.weight"} <= decayed
    assert not any(n.startswith("grounder.clip.") for n in decayed | exempt)
    assert decayed | exempt == {n for n in names.values() if not n.startswith("grounder.clip.")}
