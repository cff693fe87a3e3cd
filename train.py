"""Train the salt UNet on one fold: `python train.py --encoder=101 --fold=2` (see --help).

Re-running the same command resumes from WORKDIR's latest checkpoint. `--demo` trains the tiny
model on the built-in synthetic data in a few CPU minutes.
"""

from __future__ import annotations

import sys

from salt_jax.cache import enable_compilation_cache
from salt_jax.errors import UserError
from salt_jax.training import NonFiniteLossError, parse_args, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    enable_compilation_cache()
    try:
        result = run(cfg)
    except UserError as err:  # data, flag values, file system, workdir, weights: found before any write
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1
    if result.records:
        print(f"done: {result.workdir}  last val_map {result.records[-1]['val_map']:.4f}")
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
