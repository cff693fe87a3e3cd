"""The guard shared by the PyTorch parity tests: torch and Cadene's senet.py must be importable."""

import pytest


def require_torch_reference():
    """Returns (torch, convert.reference); otherwise skips the calling module, saying why."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("convert.reference")
    try:
        reference.cadene_senet()
    except reference.ReferenceUnavailable as err:
        pytest.skip(str(err), allow_module_level=True)
    return torch, reference
