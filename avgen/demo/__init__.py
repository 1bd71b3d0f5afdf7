"""The avgen studio: a Gradio page to generate, play and inspect clips (`avgen demo`, `demos/app.py`).

Importing this package turns the process offline for Gradio and the Hugging Face Hub: Gradio's
analytics and version check are off, and the Hub client refuses network access (the studio loads
its weights from a local folder and needs nothing else).

    inputs.py  what is accepted (limits, checks, uploads), UI-free
    studio.py  the engine: one loaded model, request -> clip, mp4, wav, figure, sync report
    app.py     the Gradio page over the studio: build_app(), launch()
"""
from __future__ import annotations

import os
import sys

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def go_offline() -> None:
    os.environ.update(OFFLINE_ENV)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; diffusers may have imported it already
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True


go_offline()

__all__ = ["go_offline", "OFFLINE_ENV"]
