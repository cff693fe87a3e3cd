"""The guard shared by the PyTorch parity tests: torch and Cadene's senet.py must be importable."""

import pytest


def torch_reference_or_reason():
    """(torch, convert.reference, None) when both work, else (None, None, why not).

    For a module whose other tests need no torch: it marks only its torch tests skipped.
    """
    try:
        import torch
        from convert import reference
    except ImportError as err:
        return None, None, f"the PyTorch reference is not importable: {err}"
    try:
        reference.cadene_senet()
    except reference.ReferenceUnavailable as err:
        return None, None, str(err)
    return torch, reference, None


def require_torch_reference():
    """Returns (torch, convert.reference); otherwise skips the calling module, saying why."""
    torch, reference, why_not = torch_reference_or_reason()
    if why_not:
        pytest.skip(why_not, allow_module_level=True)
    return torch, reference
