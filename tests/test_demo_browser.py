"""The studio as a person uses it: headless Chromium (Debian's `chromium`, driven by Playwright) opens
the page, types a prompt, presses Generate, plays the result and checks that the browser decodes a
3-second video with sound. Screenshots go to pytest's tmp folder, or to $AVGEN_SCREENSHOT_DIR."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from avgen.demo.studio import analyse_file
from tests.demo_helpers import serving, tiny_weights  # noqa: F401  (fixture)

CHROMIUM = os.environ.get("AVGEN_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set AVGEN_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        # autoplay without a click, and no sandbox: CI runs as root in a container
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tiny_weights, tmp_path_factory):
    from avgen.demo.app import build_app

    app = build_app(tiny_weights, "cpu", seeds_dir=tmp_path_factory.mktemp("no-seeds"),
                    workdir=tmp_path_factory.mktemp("app"))
    with serving(app) as url:
        yield app, url


@pytest.fixture
def page_url(served):
    return served[1]


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("AVGEN_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


PLAY_AND_MEASURE = """async () => {
    const v = document.querySelector('#result-video video');
    if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
    v.muted = false;
    await v.play();
    const bytes = [v.webkitAudioDecodedByteCount];
    for (let i = 0; i < 4; i++) {
        await new Promise(r => setTimeout(r, 400));
        bytes.push(v.webkitAudioDecodedByteCount);
    }
    // decode the file's sound track a second way, through WebAudio
    const buf = await (await fetch(v.currentSrc)).arrayBuffer();
    const audio = await new OfflineAudioContext(1, 8000, 8000).decodeAudioData(buf);
    const x = audio.getChannelData(0);
    let energy = 0;
    for (let i = 0; i < x.length; i++) energy += x[i] * x[i];
    return {duration: v.duration, playedTo: v.currentTime, frames: v.webkitDecodedFrameCount, bytes,
            webaudioSeconds: audio.duration, webaudioRms: Math.sqrt(energy / x.length),
            width: v.videoWidth, height: v.videoHeight};
}"""


def test_type_a_prompt_generate_and_play(browser, page_url, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(page_url)
    page.locator("#prompt textarea, #prompt input").first.fill("3 1 4")
    page.locator("#generate").click()
    page.wait_for_selector("#result-video video", timeout=120_000)
    page.wait_for_selector("#report table", timeout=30_000)
    got = page.evaluate(PLAY_AND_MEASURE)
    page.screenshot(path=str(shots / "demo_after_generate.png"), full_page=True)
    assert abs(got["duration"] - 3.0) < 0.1, got
    assert got["width"] == 256 and got["height"] == 256, got  # upscaled 8x for viewing
    assert got["playedTo"] > 0.5 and got["frames"] > 5, got  # it played
    assert got["bytes"][-1] > got["bytes"][0] >= 0 and got["bytes"][-1] > 0, got  # sound was decoded as it played
    assert abs(got["webaudioSeconds"] - 3.0) < 0.2 and got["webaudioRms"] > 1e-3, got
    assert "3 1 4" in page.locator("#report").inner_text()
    # the page works offline and tells no third party about its visitors: fonts, scripts, media all local
    elsewhere = [u for u in requested if u.startswith(("http:", "https:", "ws:", "wss:")) and
                 not u.split("/")[2].startswith("127.0.0.1:")]
    assert elsewhere == []
    page.close()


def test_the_player_rests_on_the_first_event_with_its_controls_showing(browser, page_url, shots, monkeypatch):
    """A clip starts blank until its first event: before it is played, the player shows the middle of the
    first event the picture holds (as the report measures it on the very file the page got), and its
    controls are visible without hovering."""
    import avgen.demo.studio as studio_module
    from avgen.data import make_dataset

    clip = make_dataset("shapes", split="test").clip(0, labels="circle")  # one glyph, at a known time
    assert clip.events[0].start_s > 0.2  # blank at the start
    monkeypatch.setattr(studio_module, "generate", lambda *a, **k: [clip])
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(page_url)
    page.locator("#prompt textarea, #prompt input").first.fill("3")
    page.locator("#generate").click()
    page.wait_for_selector("#report table", timeout=120_000)
    src = page.evaluate("() => document.querySelector('#result-video video').currentSrc")
    mp4 = shots / "rested.mp4"
    mp4.write_bytes(page.request.get(src).body())
    first = analyse_file(mp4, "", None)["video_events_s"][0]
    assert abs(first[0] - clip.events[0].start_s) < 0.07  # the event the clip holds
    page.wait_for_function("(t) => Math.abs(document.querySelector('#result-video video').currentTime - t) < 0.05",
                           arg=(first[0] + first[1]) / 2, timeout=10_000)
    assert page.evaluate("() => getComputedStyle(document.querySelector('#result-video .controls')).opacity") == "1"
    page.screenshot(path=str(shots / "demo_player_at_rest.png"))
    page.close()


def test_a_bad_prompt_shows_the_reason(browser, page_url, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(page_url)
    page.locator("#prompt textarea, #prompt input").first.fill("3 1 4 1 5")
    page.locator("#generate").click()
    message = page.get_by_text("at most 3 fit in a clip")
    message.first.wait_for(timeout=60_000)
    # the reason stays where the clip would be, after the toast is gone
    page.locator("#report").get_by_text("No clip: the prompt has 5 labels; at most 3 fit in a clip").wait_for(
        timeout=30_000)
    page.screenshot(path=str(shots / "demo_bad_prompt.png"))
    page.close()


def test_the_dice_rolls_a_new_seed_and_modes_show_their_upload(browser, page_url):
    page = browser.new_page()
    page.goto(page_url)
    seed = page.locator("#seed input")
    seed.wait_for()
    before = seed.input_value()
    page.locator("#dice").click()
    page.wait_for_function("(v) => document.querySelector('#seed input').value !== v", arg=before, timeout=10_000)
    assert seed.input_value().isdigit() and seed.input_value() != before
    assert page.get_by_text("sound for the picture to follow").count() == 0
    page.get_by_label("audio → video").check()
    page.get_by_text("sound for the picture to follow").first.wait_for(timeout=10_000)
    page.close()


def test_a_progress_bar_counts_the_sampling_steps(browser, served, monkeypatch):
    app, url = served
    network = app.avgen_studio.pipe.transformer
    forward = network.forward

    def slow_forward(*a, **k):  # the tiny model samples faster than a person can look
        time.sleep(0.1)
        return forward(*a, **k)
    monkeypatch.setattr(network, "forward", slow_forward)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#prompt textarea, #prompt input").first.fill("5")
    # the steps the page will send (its default): setting the slider from the test was not reliable in
    # a full CI run (the number box kept 25 there, never in a module run), and it is not what is tested
    box = page.locator("#steps input[type=number]")
    if not box.is_visible():
        page.get_by_text("settings", exact=True).first.click()  # open the settings accordion
    steps = box.input_value(timeout=10_000)
    assert steps.isdigit()
    page.locator("#generate").click()
    page.get_by_text(re.compile(rf"\d+/{steps} steps")).first.wait_for(timeout=60_000)
    page.wait_for_selector("#report table", timeout=120_000)
    page.close()


def test_audio_to_video_from_an_uploaded_sound(browser, page_url, tmp_path, shots):
    from avgen.data.io import write_wav

    t = np.arange(16000) / 8000
    voice = write_wav((0.5 * np.sin(2 * np.pi * 300 * t) * (t > 0.5)).astype(np.float32), 8000, tmp_path / "voice.wav")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(page_url)
    page.get_by_label("audio → video").check()
    page.get_by_text("sound for the picture to follow").first.wait_for(timeout=10_000)
    page.locator("input[type=file]").first.set_input_files(str(voice))
    page.locator("#generate").click()
    page.get_by_text("padded with silence to 3 s").first.wait_for(timeout=120_000)  # the note about the fit
    page.wait_for_selector("#result-video video", timeout=60_000)
    duration = page.evaluate("""async () => {
        const v = document.querySelector('#result-video video');
        if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
        return v.duration; }""")
    page.screenshot(path=str(shots / "demo_audio_to_video.png"), full_page=True)
    assert abs(duration - 3.0) < 0.1
    page.close()


@pytest.fixture(scope="module")
def fast_served(tiny_weights, tmp_path_factory):
    """The studio on tiny weights with a (random) distilled student, starting on the fast sampler."""
    from avgen.demo.app import build_app
    from tests.test_student import with_student

    weights = with_student(tiny_weights, tmp_path_factory.mktemp("fast"))
    app = build_app(weights, "cpu", seeds_dir=tmp_path_factory.mktemp("no-seeds"),
                    workdir=tmp_path_factory.mktemp("app"), sampler="fast")
    with serving(app) as url:
        yield app, url


def test_stream_plays_the_first_chunk_while_the_rest_is_made_without_a_gap(browser, fast_served, shots):
    """Stream 10 s: the player (Web Audio, canvas) gets five chunks in order, schedules each right after
    the last with none late, shows the picture, and the whole clip lands in the result player."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(fast_served[1])
    page.locator("#prompt textarea, #prompt input").first.fill("3 1 4 1 5")
    seconds = page.locator("#stream-seconds input[type=number]")
    seconds.fill("10")
    seconds.press("Enter")
    page.locator("#stream").click()
    page.wait_for_function("window.avgenStream && window.avgenStream.ended === true", timeout=120_000)
    stats = page.evaluate("window.avgenStream.stats")
    page.wait_for_selector("#result-video video", timeout=30_000)
    page.screenshot(path=str(shots / "demo_after_stream.png"), full_page=True)
    assert stats["chunks"] == 5 and abs(stats["seconds"] - 10.0) < 1e-6, stats
    assert stats["gaps_s"] == [] and all(lead > 0 for lead in stats["lead_s"]), stats
    assert 0 < stats["first_sound_ms"] < 60_000 and stats["first_picture_ms"] is not None, stats
    duration = page.evaluate("document.querySelector('#result-video video').duration")
    assert abs(duration - 10.0) < 0.2
    page.close()
