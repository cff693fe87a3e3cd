"""The guards shared by the tests that compare with PyTorch: torch (and, for the parity tests,
Cadene's senet.py) must be importable, else those tests skip, saying why."""

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


def optional_torch_reference():
    """(torch, convert.reference, needs_torch) for a module whose other tests need no torch:
    `needs_torch` marks the tests to skip, with the reason, when either is missing."""
    torch, reference, why_not = torch_reference_or_reason()
    return torch, reference, pytest.mark.skipif(why_not is not None, reason=why_not or "")


def optional_torch(reason: str = "torch is not installed"):
    """(torch or None, needs_torch) for a module that needs torch itself, not Cadene's senet.py."""
    try:
        import torch
    except ImportError:
        return None, pytest.mark.skip(reason=reason)
    return torch, pytest.mark.skipif(False, reason=reason)


def require_torch_reference():
    """Returns (torch, convert.reference); otherwise skips the calling module, saying why."""
    torch, reference, why_not = torch_reference_or_reason()
    if why_not:
        pytest.skip(why_not, allow_module_level=True)
    return torch, reference
