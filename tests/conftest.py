"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mixerlab.linear import cpu_matmul_backend, set_cpu_matmul_backend


@pytest.fixture(params=["onednn", "blas"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test on both backends, whatever this machine's measurement chose; restored afterwards."""
    if request.param == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    before = cpu_matmul_backend()
    set_cpu_matmul_backend(request.param)
    yield request.param
    set_cpu_matmul_backend(before)
