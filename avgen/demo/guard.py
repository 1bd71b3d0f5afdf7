"""What stands between the studio's endpoint and anyone who calls it: every input checked by the studio's
own rules before Gradio touches it, one sentence for what is wrong (never a component's internals, a
pydantic dump or the server's paths), one log line per refused request, and a per-address upload quota.

Gradio reads an API call's values into its components before the studio's function runs, and a value of
the wrong type (a seed "NaN", steps "abc", a string where a file belongs, too few values) fails there with
Gradio's own text. `StudioBlocks` checks each value against its component's kind first; what passes is
what the page itself sends. Values in range are then the settings table's business (the handler).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

import gradio as gr

from avgen.api.settings import shown

log = logging.getLogger("avgen.studio")

NUMBERS = (gr.Number, gr.Slider)
CHOICES = (gr.Radio, gr.Dropdown)
FILES = (gr.Audio, gr.Video)


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose named API endpoints refuse a malformed request in one sentence, naming the input."""

    checked: dict[str, tuple[str, ...]]  # api_name -> its inputs' names, for the endpoints checked here

    def check_inputs(self, api_name: str, names: tuple[str, ...]) -> None:
        """Check the values of endpoint `api_name` (named `names`, in order) before Gradio reads them."""
        self.checked = {**getattr(self, "checked", {}), api_name: tuple(names)}

    async def preprocess_data(self, block_fn, inputs, state, explicit_call: bool = False):
        names = getattr(self, "checked", {}).get(block_fn.api_name)
        if names is not None:
            problem = malformed(block_fn.inputs, names, inputs)
            if problem:
                log.warning("refused /%s: %s", block_fn.api_name or block_fn.name, problem)
                raise gr.Error(problem, print_exception=False)
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)


def malformed(components, names: tuple[str, ...], values: list) -> str:
    """What is wrong with a request's values for these input components, in one sentence ('' if nothing)."""
    if len(values) < len(components):
        return (f"the request has {len(values)} values; it takes {len(components)}, in this order: "
                f"{', '.join(names)}")
    for name, component, value in zip(names, components, values):
        if isinstance(component, gr.Checkbox):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(component, NUMBERS):
            whole = isinstance(component, gr.Number) and component.precision == 0
            ok = is_plain_number(value) and (not whole or float(value).is_integer())
            kind = "a whole number" if whole else "a number"
        elif isinstance(component, CHOICES):
            ok, kind = isinstance(value, str), "one of the offered choices"
        elif isinstance(component, gr.Textbox):
            ok, kind = value is None or isinstance(value, str), "text"
        elif isinstance(component, FILES):
            ok, kind = value is None or file_payload(value), "an uploaded file (or nothing)"
        else:
            continue
        if not ok:
            return f"{name} must be {kind}, got {shown(value)}"
    return ""


def is_plain_number(value) -> bool:
    """A JSON number that is finite (not a bool, not a string of digits)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def file_payload(value) -> bool:
    """What the page and gradio_client send for a file: {"path": ...} (a video: {"video": {"path": ...}})."""
    if isinstance(value, dict) and isinstance(value.get("video"), dict):
        value = value["video"]
    return isinstance(value, dict) and isinstance(value.get("path") or value.get("url"), str)


class UploadQuota:
    """ASGI middleware: at most `max_files` uploads and `max_bytes` uploaded from one client address within
    `window_s` (the lifetime of Gradio's cache, which holds them), so a burst of big uploads cannot fill
    the disk. An upload's size is its declared Content-Length (one without counts as `per_file` bytes);
    over quota, 429 with one sentence, before a byte of the body is read."""

    def __init__(self, app, max_files: int, max_bytes: int, per_file: int, window_s: float, clock=time.monotonic):
        self.app, self.max_files, self.max_bytes, self.per_file = app, max_files, max_bytes, per_file
        self.window_s, self.clock = window_s, clock
        self.seen: dict[str, deque] = {}  # client address -> (time, bytes) of its recent uploads
        self.lock = threading.Lock()

    def admit(self, client: str, size: int) -> str:
        """'' when this upload fits the client's quota (and it is counted), else why not."""
        now = self.clock()
        with self.lock:
            recent = self.seen.setdefault(client, deque())
            while recent and now - recent[0][0] > self.window_s:
                recent.popleft()
            used = sum(n for _, n in recent)
            if len(recent) >= self.max_files or used + size > self.max_bytes:
                minutes = max(1, round((self.window_s - (now - recent[0][0])) / 60)) if recent else 1
                return (f"upload quota reached: at most {self.max_files} files and {self.max_bytes / 2 ** 20:g} MB "
                        f"an hour from one address; try again in about {minutes} min")
            recent.append((now, size))
            if len(self.seen) > 10_000:  # addresses that stopped uploading long ago
                self.seen = {c: q for c, q in self.seen.items() if q and now - q[-1][0] <= self.window_s}
        return ""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/gradio_api/upload"):
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length", b"").decode() or ""
            size = int(declared) if declared.isdigit() else self.per_file
            client = (scope.get("client") or ("unknown",))[0]
            problem = self.admit(client, size)
            if problem:
                log.warning("refused an upload from %s: %s", client, problem)
                body = ('{"detail": "%s"}' % problem).encode()
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


__all__ = ["StudioBlocks", "UploadQuota", "malformed"]
