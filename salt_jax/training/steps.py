"""The Trainer: the optimizer and the jitted, data-parallel train and eval steps.

The NNX model is split once into (graphdef, params, batch_stats): the parameters and the
BatchNorm running statistics. Each step is a pure function of arrays, jitted once with explicit
shardings on a 1-D device mesh with axis "data": the batch indices are sharded over "data",
everything else (parameters, optimizer state, the uint8 datasets) is replicated. Under jit the
BatchNorm batch statistics are therefore reductions over the global batch (sync BN), and the
gradient is the global-batch gradient, so N devices compute what one device would on the same
global batch.

The whole fold lives on the devices as uint8 (N, 128, 128) arrays (padded once); a step gathers
its batch by index, scales it to [0, 1], augments it (salt_jax.data.augment) and repeats the
image on 3 channels (salt_jax.data.geometry), all inside the jitted function. The loss kind
(BCE+dice or Lovasz) is chosen inside the step from the traced epoch
(losses.LossOptions.use_lovasz), and the learning rate is an injected optimizer hyperparameter,
so nothing recompiles across epochs, at the switch, or when the lr changes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from salt_jax.data import geometry
from salt_jax.data.augment import augment_batch, batch_key
from salt_jax.losses import LossOptions
from salt_jax.mesh import DATA_AXIS
from salt_jax.models.layers import example_weights
from salt_jax.metrics import kaggle_score

TrainState = dict[str, Any]  # {"params", "batch_stats", "opt_state", "step"}


def make_optimizer(recipe: str, weight_decay: float, lr: float) -> optax.GradientTransformation:
    """The recipe's optimizer with the lr as an injected (host-settable) hyperparameter.

    original: coupled L2 (decay added to the gradient) then Adam, as torch's Adam(weight_decay=).
    cosine: coupled L2 then SGD with momentum 0.9 (torch's SGD(momentum=0.9, weight_decay=)).
    """

    def build(learning_rate):
        direction = optax.scale_by_adam() if recipe == "original" else optax.trace(decay=0.9)
        return optax.chain(
            optax.add_decayed_weights(weight_decay), direction, optax.scale_by_learning_rate(learning_rate)
        )

    return optax.inject_hyperparams(build)(learning_rate=lr)


def _to_float_batch(images_u8: jax.Array, masks_u8: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gather a batch: uint8 (N, 128, 128) -> float32 images in [0, 1] and masks, (B, 128, 128, 1)."""
    x = geometry.to_unit(jnp.take(images_u8, idx, axis=0))[..., None]
    y = jnp.take(masks_u8, idx, axis=0).astype(jnp.float32)[..., None]
    return x, y


class Trainer:
    """Trains one model: its train and eval graphs, the optimizer and the jitted steps.

    Args:
      model: the SaltUNet (any mode; train and eval graphs are derived from it).
      tx: the optimizer (see make_optimizer).
      mesh: the device mesh (salt_jax.mesh.data_mesh).
      seed: the augmentation seed; batch keys are batch_key(seed, epoch, global step).
      loss: the loss switch and Lovasz form.
      augment: False trains on the batches as they are (debugging, parity tests).
    """

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, mesh, *, seed: int,
                 loss: LossOptions, augment: bool = True):
        self.mesh = mesh
        self.tx = tx
        self.seed = seed
        self.loss = loss
        self.augment = augment
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharded = NamedSharding(mesh, P(DATA_AXIS))
        train_view = nnx.view(model, use_running_average=False, raise_if_not_found=False)
        eval_view = nnx.view(model, use_running_average=True, raise_if_not_found=False)
        self.graph_train, params, batch_stats = nnx.split(train_view, nnx.Param, nnx.BatchStat)
        self.graph_eval, _, _ = nnx.split(eval_view, nnx.Param, nnx.BatchStat)
        self._initial = (params, batch_stats)
        # The jitted step takes the train state as a flat list of arrays and its structure as a
        # static argument: dispatching the nested state itself (1,017 nnx Variables for the
        # SE-ResNeXt-50, flattened and rebuilt in Python each call) cost 4.7-5.4 ms of host time
        # per call on our 2-core CPU, the same arrays as a list 1.8-2.4 ms; a GPU's step at the
        # recipe's batch of 10 is ~35-50 ms, and the host's share of it should be small.
        self.train_step_flat = jax.jit(
            self._train_step_flat,
            static_argnums=(0,),
            in_shardings=(self.replicated,) * 3 + (self.batch_sharded,) * 2 + (self.replicated,),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(1,),
        )
        self.eval_step = jax.jit(
            self._eval_step,
            in_shardings=(self.replicated,) * 4 + (self.batch_sharded,) * 2 + (self.replicated,),
            out_shardings=(self.replicated, self.batch_sharded),
        )
        self._init_opt = jax.jit(tx.init, out_shardings=self.replicated)

    # ------------------------------------------------------------------ state

    def init_state(self) -> TrainState:
        """The initial train state (the model's current weights), replicated on the mesh."""
        params, batch_stats = (replicate(tree, self.replicated) for tree in self._initial)
        return {"params": params, "batch_stats": batch_stats, "opt_state": self._init_opt(params),
                "step": replicate(np.zeros((), np.int32), self.replicated)}

    def reset_optimizer(self, state: TrainState) -> TrainState:
        """Fresh optimizer state (moments zeroed) of the same structure; the lr is set afterwards."""
        return {**state, "opt_state": self._init_opt(state["params"])}

    def set_lr(self, state: TrainState, lr: float) -> TrainState:
        """Writes the learning rate into the injected hyperparameter (no recompilation)."""
        opt_state = state["opt_state"]
        old = opt_state.hyperparams["learning_rate"]
        new = replicate(np.asarray(lr, dtype=old.dtype), self.replicated)
        hyper = {**opt_state.hyperparams, "learning_rate": new}
        return {**state, "opt_state": opt_state._replace(hyperparams=hyper)}

    def train_step(self, state: TrainState, images_u8, masks_u8, idx, valid, epoch) -> tuple[TrainState, dict]:
        """One optimizer step (see _train_step); `state` is donated. A loop of many steps keeps
        the state flat instead: `leaves, tree = jax.tree.flatten(state)`, then
        `leaves, out = train_step_flat(tree, leaves, ...)` per step."""
        leaves, tree = jax.tree.flatten(state)
        leaves, out = self.train_step_flat(tree, leaves, images_u8, masks_u8, idx, valid, epoch)
        return jax.tree.unflatten(tree, leaves), out

    def model(self, state: TrainState) -> nnx.Module:
        """The eval-mode model holding `state`'s weights (for export and prediction)."""
        return nnx.merge(self.graph_eval, state["params"], state["batch_stats"])

    # ------------------------------------------------------------------ steps (pure, jitted)

    def _train_step_flat(self, tree, leaves, *batch):
        state, out = self._train_step(jax.tree.unflatten(tree, leaves), *batch)
        return jax.tree.leaves(state), out

    def _train_step(self, state: TrainState, images_u8, masks_u8, idx, valid, epoch):
        """One optimizer step on the global batch `idx` (B,) of the uint8 training arrays.

        `valid` (B,) marks the real examples: padding (added so a batch splits evenly over the
        devices) is left out of the loss and of the BatchNorm statistics, so the step equals the
        step on the valid examples alone. Returns (new state, {"loss"}); the loss is the
        pre-update training loss of the batch.
        """
        x, y = _to_float_batch(images_u8, masks_u8, idx)
        if self.augment:
            x, y = augment_batch(batch_key(self.seed, epoch, state["step"]), x, y)
        x = geometry.to_channels(x)

        def loss_fn(params):
            model = nnx.merge(self.graph_train, params, state["batch_stats"], copy=True)
            with example_weights(valid):
                logits, salt_prob = model(x)
            loss, _ = self.loss(logits, salt_prob, y, epoch=epoch, valid=valid)
            _, _, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
            return loss, batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                     "step": state["step"] + 1}
        return new_state, {"loss": loss}

    def _eval_step(self, params, batch_stats, images_u8, masks_u8, idx, valid, epoch):
        """Eval-mode forward on `idx` (B,); `valid` (B,) masks out padding of the last batch.

        Returns ({"loss_sum", "score_sum", "count"} over the valid images, salt probabilities
        of the 101x101 crop (B, 101, 101)). The loss is per image (dice per image, Lovasz per
        image) with the kind of `epoch`; the score is the Kaggle metric of logits > 0 (p > 0.5)
        on the 101x101 crop.
        """
        x, y = _to_float_batch(images_u8, masks_u8, idx)
        model = nnx.merge(self.graph_eval, params, batch_stats, copy=True)
        logits, salt_prob = model(geometry.to_channels(x))
        losses = jax.vmap(lambda lg, sp, m: self.loss(lg[None], sp[None], m[None], epoch=epoch)[0])(
            logits, salt_prob, y)
        crop_logits = geometry.crop(logits)[..., 0]
        scores = kaggle_score(geometry.crop(y)[..., 0], crop_logits > 0)
        w = valid.astype(jnp.float32)
        sums = {"loss_sum": jnp.sum(losses * w), "score_sum": jnp.sum(scores * w), "count": jnp.sum(w)}
        return sums, jax.nn.sigmoid(crop_logits)


def replicate(tree, sharding: NamedSharding):
    """Host values (identical on every process) -> global arrays with `sharding` (replicated)."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(put, tree)


def shard_batch(global_values: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global (B, ...) host array -> a batch-sharded global array; each process feeds its rows.

    Every process computes the same global index vector from (seed, epoch); it contributes only
    the rows its own devices hold (multi-host data parallelism).
    """
    shape = global_values.shape
    rows = [s[0] for s in sharding.addressable_devices_indices_map(shape).values()]
    start = min(r.start or 0 for r in rows)
    stop = max(shape[0] if r.stop is None else r.stop for r in rows)
    return jax.make_array_from_process_local_data(sharding, global_values[start:stop], shape)
