"""Training: `run(TrainConfig)` trains one fold data-parallel over every device (see loop.py).

    from salt_jax.training import TrainConfig, run
    result = run(TrainConfig(encoder="tiny", fold=0, epochs=3, switch_epoch=1, workdir="runs/x"))
"""

from salt_jax.training.config import TrainConfig, demo_config, parse_args
from salt_jax.training.loop import IncompatibleRunError, NonFiniteLossError, RunResult, run

__all__ = ["TrainConfig", "demo_config", "parse_args", "run", "RunResult", "IncompatibleRunError",
           "NonFiniteLossError"]
