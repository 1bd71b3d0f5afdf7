"""The studio's API as an outsider calls it: a malformed value (a seed "NaN" or 1.5 or true, steps "abc", a
string where a file belongs, too few values) is refused with one sentence naming the input, never a
component's internals, a pydantic dump or the server's folders; the server logs one line for it, not a
traceback; and one address cannot fill the disk with uploads."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from avgen.demo.inputs import DemoLimits
from tests.demo_helpers import serving, tiny_weights  # noqa: F401  (fixture)

GOOD = ["t2av", "3", 0, 2, 4.0, 4.0, 1.0, "euler", "cpu", None, None, 0.1, 0.8, True, ""]  # the page's own values


@pytest.fixture(scope="module")
def served(tiny_weights, tmp_path_factory):  # noqa: F811
    from avgen.demo.app import build_app

    limits = DemoLimits(quota_files=3, quota_mb=1)
    app = build_app(tiny_weights, "cpu", limits=limits, seeds_dir=tmp_path_factory.mktemp("no-seeds"),
                    workdir=tmp_path_factory.mktemp("api-app"), warm_up=False)
    with serving(app) as url:
        yield app, url


def call(url: str, data: list) -> tuple[str, str]:
    """POST /generate with raw values; ("complete" | "error", its message or data) from the event stream."""
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{url}gradio_api/call/generate", json={"data": data})
        r.raise_for_status()
        event = r.json()["event_id"]
        kind, payload = None, None
        with c.stream("GET", f"{url}gradio_api/call/generate/{event}") as s:
            for line in s.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    payload = json.loads(line.split(":", 1)[1]) if line.split(":", 1)[1].strip() else None
                    return kind, payload if kind == "complete" else str(payload)
    return str(kind), str(payload)


def with_value(index: int, value) -> list:
    data = list(GOOD)
    data[index] = value
    return data


@pytest.mark.parametrize("data, sentence", [
    (with_value(2, "NaN"), "seed must be a whole number, got 'NaN'"),
    (with_value(2, 1.5), "seed must be a whole number, got 1.5"),  # refused, not rounded to 2
    (with_value(2, True), "seed must be a whole number, got True"),
    (with_value(3, "abc"), "steps must be a number, got 'abc'"),
    (with_value(9, "/etc/passwd"), "audio must be an uploaded file (or nothing), got '/etc/passwd'"),
    (with_value(10, 7), "video must be an uploaded file (or nothing), got 7"),
    (with_value(0, ["t2av"]), "mode must be one of the offered choices, got ['t2av']"),
    (with_value(13, "yes"), "postfilter must be true or false, got 'yes'"),
    (GOOD[:5], "the request has 5 values; it takes 15, in this order: mode, prompt, seed, steps, guidance, "
               "audio_guidance, modality, sampler, device, audio, video, guide_lo, guide_hi, postfilter, keep"),
])
def test_a_malformed_value_gets_one_sentence_and_one_log_line(served, data, sentence, caplog):
    app, url = served
    with caplog.at_level(logging.WARNING, logger="avgen.studio"):
        kind, message = call(url, data)
    assert kind == "error" and sentence in message, message
    for leak in ("object at 0x", "pydantic", "validation error", "Traceback", str(app.avgen_workdir)):
        assert leak not in message
    refusals = [r for r in caplog.records if r.name == "avgen.studio"]
    assert len(refusals) == 1 and sentence in refusals[0].getMessage() and "\n" not in refusals[0].getMessage()


def test_the_page_s_own_values_still_make_a_clip(served):
    kind, data = call(served[1], GOOD)
    assert kind == "complete" and data[4]["prompt"] == "3"


def test_an_address_cannot_upload_more_than_its_quota(served, tmp_path, caplog):
    """3 files and 1 MB an hour in this studio's limits: the fourth small upload, or one that would pass
    the bytes, is refused with 429 and one sentence, before its body is read."""
    app, url = served
    quota = app.avgen_studio.limits
    small = tmp_path / "small.wav"
    small.write_bytes(b"\0" * 1000)
    codes = []
    with caplog.at_level(logging.WARNING, logger="avgen.studio"), httpx.Client(timeout=60) as c:
        for _ in range(quota.quota_files + 2):
            with small.open("rb") as f:
                r = c.post(f"{url}gradio_api/upload", files={"files": ("small.wav", f, "audio/wav")})
            codes.append(r.status_code)
        refused = r
    assert codes == [200] * quota.quota_files + [429, 429], codes
    assert "upload quota reached: at most 3 files and 1 MB an hour from one address" in refused.json()["detail"]
    assert sum("refused an upload" in rec.getMessage() for rec in caplog.records) == 2


def test_the_quota_counts_bytes_and_forgets_after_its_window():
    from avgen.demo.guard import UploadQuota

    now = [0.0]
    q = UploadQuota(None, max_files=10, max_bytes=1000, per_file=600, window_s=3600, clock=lambda: now[0])
    assert q.admit("a", 600) == "" and q.admit("b", 600) == ""  # addresses are counted apart
    assert "upload quota reached" in q.admit("a", 600)  # 1200 bytes > 1000
    assert q.admit("a", 400) == ""  # exactly at the bound
    now[0] = 3601.0
    assert q.admit("a", 900) == ""  # an hour later the old uploads no longer count
