"""Shared by the studio tests: a tiny weights folder and a studio served on a free loopback port."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
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


ROOT = Path(__file__).resolve().parents[1]
STUDIO_COMMANDS = {  # the two ways a person starts the studio, as argv
    "avgen demo": [sys.executable, "-c", "import sys; from avgen.cli import main; sys.exit(main())", "demo"],
    "demos/app.py": [sys.executable, str(ROOT / "demos" / "app.py")],
}


def start_studio(entry: str, args: list[str], folder: Path) -> tuple[subprocess.Popen, Path, Path]:
    """`entry` (a STUDIO_COMMANDS key) + `args` as a subprocess in `folder`, with its own temp folder
    (TMPDIR: where its studio keeps every clip it makes) and its output in a log -> (process, temp, log)."""
    temp, log = folder / "tmp", folder / "studio.log"
    temp.mkdir()
    with log.open("w") as out:
        proc = subprocess.Popen(STUDIO_COMMANDS[entry] + args, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TMPDIR": str(temp)})
    return proc, temp, log


def wait_for_page(proc: subprocess.Popen, port: int, timeout: float) -> str:
    """The page's HTML once the process answers on `port`; "" if it exits or stays silent for `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
        except OSError:
            time.sleep(0.5)
    return ""
