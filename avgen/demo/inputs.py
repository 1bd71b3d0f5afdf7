"""What the studio accepts from a person besides the settings: its upload limits, and uploads conformed
to the model's clip.

The prompt is read by the model's vocabulary and the settings are checked against the one settings
table (`avgen.api.settings`), as on the command line. UI-free on purpose: every check raises a
ValueError (`DemoInputError`, `PromptError`, `SettingError`) with one sentence a user can act on, the
Gradio layer shows it, and the tests call these functions directly. Uploads are read by
`avgen.data.given.read_given`, the reader `avgen generate --audio/--video` uses, under the studio's limits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avgen.data.clip import ClipSpec
from avgen.data.given import MediaLimits, read_given
from avgen.data.io import AVReadError


class DemoInputError(ValueError):
    """Input the person can fix; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class DemoLimits:
    """Bounds of what the studio accepts (shown in the UI, enforced by the checks below)."""

    max_upload_s: float = 10.0  # decoding stops and the upload is refused past this
    max_upload_mb: int = 20  # also passed to Gradio, which refuses bigger uploads before they land
    silence_dbfs: float = -50.0  # an upload whose peak stays under this holds no usable sound
    keep_results: int = 32  # result folders kept on disk; older ones are deleted
    # uploads one address may make within the hour Gradio's cache keeps them: ten 19 MB uploads in two
    # seconds must not fill the disk, and a person trying a few sounds never meets the limit
    quota_files: int = 30
    quota_mb: int = 100

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def media(self) -> MediaLimits:
        """These limits as the library's `MediaLimits` (what `read_given` enforces)."""
        return MediaLimits(self.max_upload_bytes, self.max_upload_s, self.silence_dbfs)


# ----------------------------------------------------------------------------- uploads
def check_upload_file(path) -> Path:
    """The upload reached the server (Gradio enforces the size limit too; API callers meet it in
    `read_given`)."""
    if path is None or str(path) == "":
        raise DemoInputError("no file was uploaded")
    p = Path(path)
    if not p.is_file():
        raise DemoInputError(f"{p.name}: the upload did not arrive")
    return p


def read_audio_upload(path, spec: ClipSpec, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """An uploaded or recorded sound -> (spec.num_samples,) on the model's clock, plus notes for the
    person (what was cut or padded). Refuses files without sound, silent ones and too long ones."""
    return _read_upload(path, spec, "audio", limits)


def read_video_upload(path, spec: ClipSpec, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """An uploaded video -> (spec.num_frames, H, W, C) frames at the model's size and rate (its sound,
    if any, is ignored: the model makes a new one), plus notes for the person."""
    return _read_upload(path, spec, "video", limits)


def _read_upload(path, spec: ClipSpec, kind: str, limits: DemoLimits) -> tuple[np.ndarray, list[str]]:
    """`avgen generate`'s reader with the studio's limits; messages name the file as the person knows
    it, not the server-side temp path."""
    p = check_upload_file(path)
    try:
        return read_given(p, spec, kind, limits.media(), name=p.name)
    except AVReadError as e:
        raise DemoInputError(str(e)) from None
