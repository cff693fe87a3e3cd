"""The jitted, data-parallel train and eval steps.

The NNX model is split once into (graphdef, params, rest); `rest` holds the BatchNorm running
statistics. Each step is a pure function of arrays, jitted once with explicit shardings on a 1-D
device mesh with axis "data": the batch indices are sharded over "data", everything else
(parameters, optimizer state, the uint8 datasets) is replicated. Under jit the BatchNorm batch
statistics are therefore reductions over the global batch (sync BN), and the gradient is the
global-batch gradient, so N devices compute what one device would on the same global batch.

The whole fold lives on the devices as uint8 (N, 128, 128) arrays (padded once); a step gathers
its batch by index, converts to float, augments (salt_jax.data.augment) and repeats the image to
3 channels, all inside the jitted function. The loss kind (BCE+dice or Lovasz) is chosen inside
the step from the traced epoch, and the learning rate is an injected optimizer hyperparameter,
so nothing recompiles across epochs, at the switch, or when the lr changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from salt_jax.data.augment import augment_batch, batch_key
from salt_jax.losses import CROP_101, multi_loss
from salt_jax.mesh import DATA_AXIS
from salt_jax.models.layers import example_weights
from salt_jax.metrics import kaggle_score

TrainState = dict[str, Any]  # {"params", "rest", "opt_state", "step"}


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


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """switch_epoch: first Lovasz epoch; symmetric: symmetric Lovasz; double_sigmoid: the
    original's dice (sigmoid applied twice, `--original_dice`)."""

    switch_epoch: int
    symmetric: bool = False
    double_sigmoid: bool = False  # the original's dice (sigmoid applied twice); see losses.soft_dice


def _to_float_batch(images_u8: jax.Array, masks_u8: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gather a batch: uint8 (N, 128, 128) -> float32 images in [0, 1] and masks, (B, 128, 128, 1)."""
    x = jnp.take(images_u8, idx, axis=0).astype(jnp.float32)[..., None] / 255.0
    y = jnp.take(masks_u8, idx, axis=0).astype(jnp.float32)[..., None]
    return x, y


class Steps:
    """Holds the model's graph definitions, the optimizer and the jitted steps.

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
        self.graph_train, params, rest = nnx.split(train_view, nnx.Param, ...)
        self.graph_eval, _, _ = nnx.split(eval_view, nnx.Param, ...)
        self._initial = (params, rest)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.replicated,) * 3 + (self.batch_sharded,) * 2 + (self.replicated,),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
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
        params, rest = self._initial
        params, rest = replicate(params, self.replicated), replicate(rest, self.replicated)
        return {"params": params, "rest": rest, "opt_state": self._init_opt(params),
                "step": replicate(np.zeros((), np.int32), self.replicated)}

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the train state (an orbax restore target)."""
        return jax.eval_shape(lambda: self.init_state())

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

    def model(self, state: TrainState) -> nnx.Module:
        """The eval-mode model holding `state`'s weights (for export and prediction)."""
        return nnx.merge(self.graph_eval, state["params"], state["rest"])

    # ------------------------------------------------------------------ steps (pure, jitted)

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
        x = jnp.repeat(x, 3, axis=-1)
        use_lovasz = epoch >= self.loss.switch_epoch

        def loss_fn(params):
            model = nnx.merge(self.graph_train, params, state["rest"], copy=True)
            with example_weights(valid):
                logits, salt_prob = model(x)
            loss, _ = multi_loss(logits, salt_prob, y, use_lovasz=use_lovasz, symmetric=self.loss.symmetric,
                                 double_sigmoid=self.loss.double_sigmoid, valid=valid)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, rest

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "rest": rest, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss}

    def _eval_step(self, params, rest, images_u8, masks_u8, idx, valid, epoch):
        """Eval-mode forward on `idx` (B,); `valid` (B,) masks out padding of the last batch.

        Returns ({"loss_sum", "score_sum", "count"} over the valid images, salt probabilities
        of the 101x101 crop (B, 101, 101)). The loss is per image (dice per image, Lovasz per
        image) with the kind of `epoch`; the score is the Kaggle metric of logits > 0 (p > 0.5)
        on the crop [13:114].
        """
        x, y = _to_float_batch(images_u8, masks_u8, idx)
        model = nnx.merge(self.graph_eval, params, rest, copy=True)
        logits, salt_prob = model(jnp.repeat(x, 3, axis=-1))
        use_lovasz = epoch >= self.loss.switch_epoch

        def one(lg, sp, m):
            loss, _ = multi_loss(lg[None], sp[None], m[None], use_lovasz=use_lovasz, symmetric=self.loss.symmetric,
                                 double_sigmoid=self.loss.double_sigmoid)
            return loss

        losses = jax.vmap(one)(logits, salt_prob, y)
        crop_logits = logits[:, CROP_101, CROP_101, 0]
        scores = kaggle_score(y[:, CROP_101, CROP_101, 0], crop_logits > 0)
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
