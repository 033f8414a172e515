"""Shared test helpers: the LlamaGen fixtures directory and the seeded-weights recipe."""

from __future__ import annotations

import math
import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

# One intra-op thread by default: on the shared 2-core machine, 2 OpenMP threads spin against
# other processes and made the model tests 4x slower (48 s vs 11.5 s measured); RANKE_TEST_THREADS
# overrides it (e.g. 2 on an idle machine).
torch.set_num_threads(int(os.environ.get("RANKE_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests run against the checkout even when ranke is not installed
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures next to the repository (override with RANKE_FIXTURES)."""
    path = Path(os.environ.get("RANKE_FIXTURES", REPO.parent / "shared" / "fixtures"))
    if not path.is_dir():
        pytest.skip(f"shared fixtures not found at {path} (set RANKE_FIXTURES to their directory)")
    return path


def seeded_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The golden files' weights: each float entry seeded from crc32 of its key (fixture README)."""
    out = {}
    for k, t in model.state_dict().items():
        if not t.is_floating_point():
            out[k] = t
            continue
        if k.endswith("codebook_used"):
            out[k] = torch.zeros_like(t)
            continue
        shape = tuple(t.shape)
        g = torch.Generator().manual_seed(zlib.crc32(k.encode()) & 0x7FFFFFFF)
        v = torch.randn(shape, generator=g, dtype=torch.float32)
        if len(shape) >= 2:
            v = v / math.sqrt(math.prod(shape[1:]))
        elif k.endswith("weight"):
            v = 1 + 0.1 * v
        else:
            v = 0.1 * v
        out[k] = v
    return out
