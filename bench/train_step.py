"""One TCL training step on ViT-B/16, split into its parts, against the real end-to-end step.

The end-to-end step is the training loop's (tcl/training.py): `TCL.forward` under autocast,
zero_grad, backward of the total loss, gradient clipping, AdamW. It is timed as it is, with no
instrumentation. The parts are then timed on the same model, in the same run, by wrapping the very
methods `TCL.forward` calls (on the instances, so the real code path runs), with synchronised
timestamps around each call and autograd hooks marking where backward enters and leaves each part:

    frozen dense features      clip.penultimate_tokens (no grad)
    frozen text embedding      clip.encode_text (no grad)
    grounder fwd / bwd         grounder.grounded_embedding + grounder.mask_logits; backward from the
                               gradient reaching the mask logits to the last grounder parameter gradient
    masked re-encoding fwd/bwd clip.encode_image of the masked images (image-level TCL); backward from
                               the gradient reaching its output to the gradient reaching its input
    losses fwd / bwd           the TCLLoss forward without the re-encoding; backward from the start
                               to the re-encoding, and between the re-encoding and the grounder
    optimizer step             clip_grad_norm_ + AdamW.step

Overhead = end-to-end step time - sum of the parts: everything outside them (zero_grad, Python glue
in TCL.forward, autograd bookkeeping). Target: at most 15% of the step. Random weights
(pretrained=None) cost the same as trained ones. The copied block is frozen as in the paper's
first 30k steps (--unfrozen for the last 20k).

On a GPU the step also gives samples/s per GPU, compared with the paper's: 50k steps of batch
1024 in 12 h on 16 V100s = 50000 * 1024 / (12 * 3600) / 16 = 74 samples/s per GPU.

With --compile, the same model then has its repeated blocks compiled in place (torch.compile of
every CLIP transformer block and every decoder block: regional compilation, so the twelve
identical blocks compile once) and the end-to-end step is timed again: the compile time, the
compiled samples/s against the eager ones, and the losses of one forward pass, eager against
compiled, at the same weights.

    python bench/train_step.py                                     # CPU: batch 4, fp32
    python bench/train_step.py --device cuda --batch 64 --bf16 --steps 10 [--compile]
"""
from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np
import torch

from open_clip.transformer import ResidualAttentionBlock

from tcl.clip import CLIPConfig, FrozenCLIP, resolve
from tcl.decoder import GatedConvBlock
from tcl.model import TCL, Grounder, GrounderConfig, TCLConfig
from tcl.training import OptimConfig, param_groups

PAPER_SAMPLES_PER_GPU = 50000 * 1024 / (12 * 3600) / 16  # 74.1: 12 h on 16 V100s
PARTS = ["frozen dense features", "frozen text embedding", "grounder forward", "grounder backward",
         "masked re-encoding forward", "masked re-encoding backward", "losses forward", "losses backward",
         "optimizer step"]


class StepTimer:
    """Timestamps of one instrumented step, synchronised with the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.enabled = False  # off: the wrapped methods run as if unwrapped (end-to-end steps)
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mark(self, name: str, first: bool = True) -> None:
        """Remember when `name` happened (the first or the last time)."""
        if not self.enabled or (first and name in self.marks):
            return
        self.marks[name] = self.now()

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            start = self.now()
            out = fn(*args, **kwargs)
            self.seconds[name] += self.now() - start
            return out
        return wrapper


def instrument(model: TCL, timer: StepTimer) -> None:
    """Wrap, on the instances, the methods TCL.forward calls; hooks mark the backward boundaries."""
    clip, grounder, criterion = model.grounder.clip, model.grounder, model.criterion
    clip.penultimate_tokens = timer.timed("frozen dense features", clip.penultimate_tokens)
    clip.encode_text = timer.timed("frozen text embedding", clip.encode_text)
    grounder.grounded_embedding = timer.timed("grounder forward", grounder.grounded_embedding)

    mask_logits = grounder.mask_logits
    def mask_logits_marked(*args, **kwargs):
        logits = mask_logits(*args, **kwargs)
        if logits.requires_grad:
            logits.register_hook(lambda grad: timer.mark("grounder backward start"))
        return logits
    grounder.mask_logits = timer.timed("grounder forward", mask_logits_marked)

    encode_image = clip.encode_image
    def encode_image_marked(images):
        if images.requires_grad:
            images.register_hook(lambda grad: timer.mark("re-encoding backward end"))
        embedding = encode_image(images)
        if embedding.requires_grad:
            embedding.register_hook(lambda grad: timer.mark("re-encoding backward start"))
        return embedding
    clip.encode_image = timer.timed("masked re-encoding forward", encode_image_marked)
    # Looked up at call time by TCL.forward (`clip.encode_image`) and by nn.Module.__call__ (`forward`).
    criterion.forward = timer.timed("losses forward (with re-encoding)", criterion.forward)

    for name, param in grounder.named_parameters():
        if param.requires_grad and not name.startswith("clip."):
            param.register_post_accumulate_grad_hook(lambda p: timer.mark("grounder backward end", first=False))


def train_step(model: TCL, optimizer: torch.optim.Optimizer, images: torch.Tensor, tokens: torch.Tensor,
               autocast, grad_clip: float, timer: StepTimer | None = None) -> dict[str, torch.Tensor]:
    """The training loop's step (tcl/training.py), with optional timestamps around backward and the optimizer."""
    with autocast:
        losses = model(images, tokens)
    optimizer.zero_grad(set_to_none=True)
    if timer and timer.enabled:
        timer.mark("backward start")
    losses["total"].backward()
    if timer and timer.enabled:
        start = timer.now()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    if timer and timer.enabled:
        timer.seconds["optimizer step"] += timer.now() - start
    return losses


def part_seconds(timer: StepTimer) -> dict[str, float]:
    s, m = dict(timer.seconds), timer.marks
    s["losses forward"] = s.pop("losses forward (with re-encoding)") - s["masked re-encoding forward"]
    s["masked re-encoding backward"] = m["re-encoding backward end"] - m["re-encoding backward start"]
    s["grounder backward"] = m["grounder backward end"] - m["grounder backward start"]
    s["losses backward"] = (m["re-encoding backward start"] - m["backward start"]) + (
        m["grounder backward start"] - m["re-encoding backward end"])
    return {name: s[name] for name in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip ViT name (random weights)")
    parser.add_argument("--pretrained", default="openai", help="open_clip tag whose architecture is built (default: openai, QuickGELU)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 4 on CPU, 64 on GPU)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps of each kind, median reported (default: 2 on CPU, 10 on GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast, as training does on GPU (default: on for cuda, off for cpu)")
    parser.add_argument("--unfrozen", action="store_true", help="train the copied block too (paper's last 20k steps)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="then time the step with the repeated blocks compiled")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 4)
    args.steps = args.steps or (10 if device.type == "cuda" else 2)
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    torch.manual_seed(0)

    # random weights in the architecture the pretrained tag was trained with (QuickGELU for openai)
    clip_config = resolve(CLIPConfig(model_name=args.model, pretrained=args.pretrained))
    config = TCLConfig(grounder=GrounderConfig(clip=clip_config))
    model = TCL(config, Grounder(config.grounder, FrozenCLIP(clip_config, load_weights=False))).to(device)
    model.apply_schedule(config.unfreeze_block_step if args.unfrozen else 0)
    optim = OptimConfig()
    optimizer = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=1e-5, betas=optim.betas, eps=optim.eps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    images = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
    captions = [f"a photo of a {c} {t}" for c, t in zip(["red", "green", "blue", "white"] * batch, ["car", "dog", "tree", "cup", "sky"] * batch)]
    tokens = model.grounder.clip.tokenize(captions[:batch]).to(device)
    grad_clip = optim.grad_clip

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed_step() -> float:
        """Seconds of one uninstrumented end-to-end step."""
        sync()
        start = time.perf_counter()
        train_step(model, optimizer, images, tokens, autocast, grad_clip)
        sync()
        return time.perf_counter() - start

    timer = StepTimer(device)
    instrument(model, timer)
    # Warm-up (allocator, kernels, optimizer state). Its losses, from the same seed and inputs, let an
    # fp32 run and a bf16 run be compared: they should agree to about 1e-2.
    first = train_step(model, optimizer, images, tokens, autocast, grad_clip)
    print("losses at the first step: " + " ".join(f"{k} {v.item():.5f}" for k, v in first.items()), flush=True)
    end_to_end, instrumented, parts = [], [], defaultdict(list)
    for _ in range(args.steps):  # interleaved, so a change of load on the machine hits both kinds alike
        timer.enabled = False
        end_to_end.append(timed_step())

        timer.enabled = True
        timer.reset()
        start = timer.now()
        train_step(model, optimizer, images, tokens, autocast, grad_clip, timer)
        instrumented.append(timer.now() - start)
        for name, seconds in part_seconds(timer).items():
            parts[name].append(seconds)

    step = float(np.median(end_to_end))
    part_medians = {name: float(np.median(v)) for name, v in parts.items()}
    total_parts = sum(part_medians.values())
    overhead = step - total_parts
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"TCL on {args.model} (random weights), batch {batch} at {args.image_size}x{args.image_size}, {device} "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {torch.get_num_threads()} CPU threads, copied block "
          f"{'trainable' if args.unfrozen else 'frozen'}, {trainable / 1e6:.1f}M trainable parameters, "
          f"median of {args.steps} steps")
    print(f"{'part':30s} {'ms/step':>9s} {'share':>7s}")
    for name in PARTS:
        print(f"{name:30s} {1000 * part_medians[name]:9.1f} {part_medians[name] / step:7.1%}")
    print(f"{'sum of the parts':30s} {1000 * total_parts:9.1f} {total_parts / step:7.1%}")
    print(f"{'overhead outside the parts':30s} {1000 * overhead:9.1f} {overhead / step:7.1%}")
    print(f"{'end-to-end step (uninstrumented)':30s} {1000 * step:9.1f} {1:7.1%}")
    inside = float(np.median(instrumented))
    print(f"{'instrumented step':30s} {1000 * inside:9.1f} {inside / step:7.1%}  "
          f"(not covered by the parts: {(inside - total_parts) / inside:.1%})")
    print(f"overhead share {overhead / step:.1%} (target <= 15%) -> {'PASS' if overhead / step <= 0.15 else 'FAIL'}")
    report_rate("eager", batch / step, device)
    if not args.compile:
        return

    timer.enabled = False
    torch.manual_seed(2)
    with torch.no_grad(), autocast:
        eager_losses = model(images, tokens)
    blocks = [m for m in model.modules() if isinstance(m, (ResidualAttentionBlock, GatedConvBlock))]
    for block in blocks:
        block.compile()
    torch.manual_seed(2)
    sync()
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        compiled_losses = model(images, tokens)
    sync()
    forward_compile = time.perf_counter() - start
    print("losses of one forward pass, eager | compiled: " + " ".join(
        f"{k} {eager_losses[k].item():.5f} | {compiled_losses[k].item():.5f}" for k in eager_losses))
    first_step = timed_step()  # the backward graphs compile here
    print(f"{len(blocks)} blocks compiled: first forward pass (compiling) {forward_compile:.1f} s, first step "
          f"(compiling the rest) {first_step:.1f} s")
    compiled_step = float(np.median([timed_step() for _ in range(args.steps)]))
    print(f"end-to-end step, compiled blocks: {1000 * compiled_step:.1f} ms against {1000 * step:.1f} eager "
          f"-> {step / compiled_step:.2f}x the eager samples/s")
    report_rate("compiled blocks", batch / compiled_step, device)


def report_rate(kind: str, rate: float, device: torch.device) -> None:
    if device.type == "cuda":
        print(f"{kind}: {rate:.1f} samples/s per GPU ({torch.cuda.get_device_name(device)}; target >= 850 on an H200); "
              f"the paper: {PAPER_SAMPLES_PER_GPU:.0f} samples/s per V100 -> {rate / PAPER_SAMPLES_PER_GPU:.2f}x")
    else:
        print(f"{kind}: {rate:.2f} samples/s on this CPU (the paper's GPU figure, {PAPER_SAMPLES_PER_GPU:.0f} samples/s "
              "per V100, is compared on a GPU only)")


if __name__ == "__main__":
    main()
