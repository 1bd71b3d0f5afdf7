"""Shared fixtures. The real data is found via $AVGEN_DATA, else ../shared/data (see README)."""
from __future__ import annotations

import os

import pytest
import torch

from avgen.data.sources import default_data_root

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_root():
    root = default_data_root()
    if not (root / "fsdd" / "recordings").is_dir() or not (root / "mnist").is_dir():
        pytest.skip(f"real data not found at {root} (set AVGEN_DATA to a folder made by `avgen data download`)")
    return root
