"""The programs the benchmarks time, taken from the library and from our PyTorch build of the original.

- JAX train step: the training's own jitted step (salt_jax.training.loop.build_trainer, as
  `train.py` builds it from a TrainConfig): the uint8 batch gathered on the device, the on-device
  augmentation, the gated loss of the Lovasz phase (switch_epoch=0, the original's 100-epoch
  phase), coupled-L2 Adam (lr 1e-4, L2 1e-4) and the BatchNorm update.
- JAX inference: the eval-mode forward of the model a run exports (`Trainer.model`).
- torch: convert/torch_unet.py's UNet with the original's Adam(lr=1e-4, weight_decay=1e-4) on the
  same loss written in torch. It does not augment: the original augmented on the CPU in its
  DataLoader workers, outside the step; the JAX step's augmentation is part of its figure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np



def synthetic_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 128, 128) and {0, 1} masks (N, 128, 128), as training holds the padded data.

    Never zeros (they can time faster than real data); every third mask is empty, so both
    branches of the salt gate's target occur, as in the real data (~39% empty).
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 128, 128), dtype=np.uint8)
    masks = (images > 153).astype(np.uint8)
    masks[::3] = 0
    return images, masks


def float_batch(images_u8: np.ndarray, masks_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's input (N, 128, 128, 3) in [0, 1] and float masks (N, 128, 128, 1)."""
    x = np.repeat(images_u8[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    return x, masks_u8[..., None].astype(np.float32)


@dataclasses.dataclass
class Program:
    """A compiled program ready to time: `call()` runs it once (the state carried along), `sync()`
    waits for the newest call; `compile_s` covers tracing, lowering and compilation."""

    call: Callable[[], None]
    sync: Callable[[], None]
    compile_s: float
    compiled: Any = None  # JAX: the AOT-compiled program (cost analysis, HLO)
    lowered: Any = None
    lower_for_flops: Callable[[], Any] | None = None  # JAX on XLA:CPU: lowers it with XLA's own conv forwards
    last: dict[str, Any] = dataclasses.field(default_factory=dict)  # JAX: the newest call's outputs

    def blocking(self) -> None:
        self.call()
        self.sync()


# ----------------------------------------------------------------------------- JAX


def jax_model(encoder: str, precision: str = "float32", grouped_impl: str | None = None, seed: int = 0):
    """The SaltUNet of `encoder` (a TrainConfig encoder name), initialised on the host as training does."""
    import jax.numpy as jnp

    from salt_jax.models import archs

    return archs.build(archs.UNET_PREFIX + encoder, seed=seed, dtype=jnp.dtype(precision), grouped_impl=grouped_impl)


def jax_train_step(model, images_u8: np.ndarray, masks_u8: np.ndarray, *, augment: bool = True) -> Program:
    """The training's jitted step on the batch (images_u8, masks_u8), AOT-compiled; each call is
    one optimizer step (the donated state replaced by the step's new one)."""
    import jax

    from salt_jax.mesh import data_mesh
    from salt_jax.training.config import TrainConfig
    from salt_jax.training.loop import build_trainer
    from salt_jax.training.steps import replicate, shard_batch

    # The original recipe's optimizer (TrainConfig's defaults) in the Lovasz phase; the model is the caller's.
    trainer = build_trainer(TrainConfig(switch_epoch=0, augment=augment), model, data_mesh())
    n = len(images_u8)
    args = (replicate(images_u8, trainer.replicated), replicate(masks_u8, trainer.replicated),
            shard_batch(np.arange(n, dtype=np.int32), trainer.batch_sharded),
            shard_batch(np.ones(n, bool), trainer.batch_sharded), replicate(np.asarray(0, np.int32), trainer.replicated))
    leaves, tree = jax.tree.flatten(trainer.init_state())  # the state as the training loop carries it
    start = time.perf_counter()
    lowered = trainer.train_step_flat.lower(tree, leaves, *args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    last = {"state": leaves, "tree": tree, "out": None}

    def call() -> None:
        last["state"], last["out"] = compiled(last["state"], *args)

    for_flops = _for_flops(lambda: jax.jit(lambda l, *a: trainer._train_step_flat(tree, l, *a)).lower(leaves, *args))
    # One device stream runs the calls in order: waiting for the newest output waits for all.
    return Program(call, lambda: jax.block_until_ready(last["out"]), compile_s, compiled, lowered, for_flops, last)


def jax_inference(model, images_u8: np.ndarray) -> Program:
    """The eval-mode forward of `model` (both outputs) on the batch, AOT-compiled."""
    import jax
    from flax import nnx

    model = nnx.view(model, use_running_average=True, raise_if_not_found=False)
    graphdef, state = nnx.split(model)
    x = jax.device_put(float_batch(images_u8, np.zeros_like(images_u8))[0])
    start = time.perf_counter()
    lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    last = {"out": None}

    def call() -> None:
        last["out"] = compiled(state, x)

    for_flops = _for_flops(lambda: jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x))
    return Program(call, lambda: jax.block_until_ready(last["out"]), compile_s, compiled, lowered, for_flops, last)


def _for_flops(lower):
    """Where the C++ forward of dense convs is on, a function that runs `lower()` (a fresh jit, so
    nothing is reused from the timed program's trace) with it off: XLA's cost analysis counts its
    custom calls as zero FLOPs. Called only when FLOPs are asked for (`xla_flops`): lowering the
    SE-ResNeXt-50's train step again takes seconds. None elsewhere (the timed program's own
    lowering is then the one to cost)."""
    from salt_jax.models import cpu_kernels

    if not cpu_kernels.usable(np.float32):
        return None

    def lower_without_cpp_forward():
        supports = cpu_kernels.supports_dense_forward
        cpu_kernels.supports_dense_forward = lambda *args: False
        try:
            return lower()
        finally:
            cpu_kernels.supports_dense_forward = supports

    return lower_without_cpp_forward


def xla_flops(program: Program) -> tuple[float | None, str]:
    """FLOPs of one call from XLA's cost analysis of the lowered HLO (else the compiled program).

    The lowered HLO first: on GPUs the compiled program hands its convolutions to cuDNN as custom
    calls, which XLA's cost analysis counts as zero FLOPs (an H200 run counted 4.9 GFLOP per image
    of the SE-ResNeXt-50 train step, its lowered HLO 239.8; docs/BENCHMARKS.md), while the lowered
    HLO is the same program on every backend. Backends behind the PJRT C API (the CUDA plugin)
    refuse `Lowered.cost_analysis()`, so there the lowered module is costed by the CPU backend's
    analysis (an H100 run of 2026-11-26 fell back to the compiled count without this).
    """
    for source, cost_of in (("xla_lowered", _lowered_cost), ("xla_compiled", lambda p: p.compiled.cost_analysis())):
        try:
            cost = cost_of(program)
        except Exception:  # some backends do not implement it; the other stage may
            continue
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops", 0) > 0:
            return float(cost["flops"]), source
    return None, "unavailable"


def _lowered_cost(program: Program) -> dict[str, float]:
    if program.lower_for_flops is not None:
        return program.lower_for_flops().cost_analysis()  # XLA:CPU
    try:
        return program.lowered.cost_analysis()
    except NotImplementedError:  # PJRT C API backend: cost the same HLO module on the CPU backend
        import jax
        from jax._src.lib import _jax  # no public API costs an HLO module on another backend

        module = program.lowered._lowering.hlo().as_hlo_module()
        return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)


# ----------------------------------------------------------------------------- torch


def torch_loss(logits, prob, masks):
    """The Lovasz-phase loss of salt_jax.losses.multi_loss, in torch, batched like ours.

    logits (N, 1, H, W), prob (N, 1), masks (N, 1, H, W) in {0, 1}. Returns
    0.1 * BCE(prob, any salt) + mean over images of the elu+1 Lovasz hinge. Computed in float32.
    """
    import torch
    import torch.nn.functional as F

    n = masks.shape[0]
    y = masks.reshape(n, -1).float()
    has_salt = (y > 0.5).any(dim=1).float()
    bce_cls = F.binary_cross_entropy(prob.reshape(n).float().clamp(1e-7, 1 - 1e-7), has_salt)
    errors = 1.0 - logits.reshape(n, -1).float() * (2.0 * y - 1.0)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    gt = torch.gather(y, 1, order)
    positives = gt.sum(dim=1, keepdim=True)
    jaccard = 1.0 - (positives - gt.cumsum(1)) / (positives + (1.0 - gt).cumsum(1))
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    lovasz = ((F.elu(errors_sorted) + 1.0) * weights).sum(dim=1).mean()
    return 0.1 * bce_cls + lovasz


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_program(model, images_u8: np.ndarray, masks_u8: np.ndarray, *, task: str, variant: str) -> Program:
    """One train step ("train_step") or eval forward ("inference") of the torch `model`.

    variant: "eager" (float32, as the original ran), "amp_cl" (autocast bf16, channels_last),
    "compile" (torch.compile of amp_cl). The first call (compilation, cudnn.benchmark's search)
    is made here and counted in compile_s.
    """
    import torch

    from salt_jax.training.config import TrainConfig

    torch.backends.cudnn.benchmark = True
    device = torch_device()
    x_np, y_np = float_batch(images_u8, masks_u8)
    images = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(device)
    masks = torch.from_numpy(y_np).permute(0, 3, 1, 2).contiguous().to(device)
    model = model.to(device)
    amp = variant in ("amp_cl", "compile")
    if amp:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if variant == "compile":
        model = torch.compile(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    # Each call sets the mode: programs of one model may be called in turn (bench_unet.py).
    if task == "inference":

        def call() -> None:
            model.eval()
            with torch.inference_mode(), autocast():
                model(images)
    else:
        recipe = TrainConfig()  # the original's Adam(lr=1e-4, weight_decay=1e-4), coupled L2 as ours
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

        def call() -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            with autocast():
                logits, prob = model(images)
            torch_loss(logits, prob, masks).backward()
            opt.step()

    start = time.perf_counter()
    call()
    sync()
    return Program(call, sync, time.perf_counter() - start)


def torch_flops(program: Program) -> float | None:
    """FLOPs of one call of an eager torch program, by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        program.call()
    return float(counter.get_total_flops()) or None
