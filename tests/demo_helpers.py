"""Shared by the studio tests: a tiny weights folder and a studio served on a free loopback port."""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
import torch

from avgen.data.clip import ClipSpec

SPEC = ClipSpec()  # the demo shows 3-s clips: the browser test checks that duration


def make_tiny_weights(folder: Path, spec: ClipSpec = SPEC) -> Path:
    """An untrained AVDiT-T saved as a pipeline folder (the layout `load_pipeline` reads).

    Every weight is random: a freshly initialised model has zero-initialised output layers and
    would emit a constant grey picture and silence, which leaves nothing to play or measure.
    """
    from avgen.model.pipeline import AVGenPipeline
    from avgen.model.transformer import AVDiT

    torch.manual_seed(0)
    model = AVDiT.from_preset("AVDiT-T", spec, tuple("0123456789"), 3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    AVGenPipeline.from_transformer(model.eval()).save_pretrained(folder)
    return folder


def make_tiny_judges(folder: Path) -> Path:
    """Untrained tiny judges in the layout `Judges.load` reads: their readings are arbitrary digits,
    enough to exercise the path from detected events to digits in the report."""
    from avgen.eval.judges import IMAGE, SPEECH, Judge, JudgeNet, tiny

    torch.manual_seed(0)
    for cfg in (IMAGE, SPEECH):
        Judge(JudgeNet(tiny(cfg))).save(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="session")
def tiny_judges(tmp_path_factory) -> Path:
    return make_tiny_judges(tmp_path_factory.mktemp("tiny-judges"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """Launch a `build_app` page in this process (server thread) on a free loopback port; yield its URL."""
    from avgen.demo.app import launch

    port = free_port()
    launch(app, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()
