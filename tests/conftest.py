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


@pytest.fixture(scope="session", autouse=True)
def temp_files_stay_in_this_run(tmp_path_factory):
    """Python's temp folder, for this process, inside pytest's own folder for this run. gradio_client
    stages every file it downloads in `tempfile.gettempdir()/<40 hex digits>/` and leaves that folder
    behind, empty, once the file has moved to `download_files`; without this the studio's client tests
    left ~370 empty folders in /tmp per run."""
    import tempfile

    old = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = old
