"""Building and loading the C++ CPU kernels (salt_jax/models/cpu_kernels.py).

Their numbers are checked against torch in test_conv_formulations.py; here: what happens without
a compiler, with a damaged cached library, and with `SALT_JAX_CPU_KERNELS=0`. Each case runs in
a fresh interpreter (`available()` is decided once per process) with its own kernel cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from salt_jax.models import cpu_kernels, layers
    ok = cpu_kernels.available()
print(json.dumps([str(ok), layers.default_grouped_impl(32),
                  "|".join(str(w.message) for w in caught if "CPU kernels" in str(w.message))]))
"""

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(sys.platform != "linux" or not (shutil.which("c++") or shutil.which("g++")),
                                 reason="the kernels build with a C++ compiler on Linux")]


def probe(cache: Path, **env: str) -> tuple[str, str, str]:
    environ = {**os.environ, "JAX_PLATFORMS": "cpu", "SALT_JAX_KERNEL_CACHE": str(cache), **env}
    environ.pop("SALT_JAX_GROUPED_CONV", None)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240, env=environ,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ok, impl, warning = json.loads(proc.stdout.strip().splitlines()[-1])
    return ok, impl, warning


def test_without_a_compiler_the_layers_keep_xla_formulations(tmp_path):
    ok, impl, warning = probe(tmp_path, CXX="false")  # a "compiler" that always fails
    assert (ok, impl) == ("False", "blocks")
    assert "false failed on cpu_kernels.cc" in warning  # one warning that names what failed
    assert not list(tmp_path.glob("*.so"))


def test_a_damaged_cached_library_is_built_again(tmp_path):
    assert probe(tmp_path)[:2] == ("True", "ffi")
    (lib,) = tmp_path.glob("*.so")
    built = lib.read_bytes()
    lib.write_bytes(built[: len(built) // 2])  # truncated, as by a full disk or a killed copy
    assert probe(tmp_path) == ("True", "ffi", "")
    rebuilt = lib.read_bytes()
    assert len(rebuilt) > len(built) // 2
    assert lib.with_suffix(".sha256").read_text() == hashlib.sha256(rebuilt).hexdigest()


def test_switched_off_on_purpose(tmp_path):
    assert probe(tmp_path, SALT_JAX_CPU_KERNELS="0") == ("False", "blocks", "")
    assert not list(tmp_path.iterdir())  # nothing built
