"""The studio under load (8 gradio_client clients x 5 requests on loopback) and its security defaults:
loopback only, no share link, no analytics, upload size capped by Gradio, files served only from
its own temp folder."""
from __future__ import annotations

import gc
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from avgen.demo.inputs import DemoLimits
from tests.demo_helpers import serving, tiny_weights  # noqa: F401  (fixture)

KEEP = 4  # result folders the studio keeps: small, so that the bound is reached many times over
CLIENTS, REQUESTS = 8, 5


def memory_kb() -> dict[str, int]:
    """This process's resident memory now (VmRSS) and at its peak so far (VmHWM), in kB, and how many
    Python objects it holds (what a leak would grow; RSS also grows as malloc arenas fill, then levels)."""
    gc.collect()
    text = Path("/proc/self/status").read_text()
    found = {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in ("VmRSS", "VmHWM")}
    return {**found, "objects": len(gc.get_objects())}


@pytest.fixture(scope="module")
def served(tiny_weights, tmp_path_factory):
    from avgen.demo.app import build_app

    workdir = tmp_path_factory.mktemp("load-app")
    app = build_app(tiny_weights, "cpu", limits=DemoLimits(keep_results=KEEP), seeds_dir=workdir / "no-seeds",
                    workdir=workdir, judges=workdir / "no-judges")  # no judges: timing only, less CPU
    app.avgen_studio.pipe.set_progress_bar_config(disable=True)
    with serving(app) as url:
        yield app, url


def predict(client, prompt: str, seed: int):
    return client.predict("t2av", prompt, seed, 2, 4.0, 4.0, 1.0, "euler", "cpu", None, None, api_name="/generate")


# ----------------------------------------------------------------------------- load
@pytest.mark.slow
def test_eight_clients_five_requests_each_all_served_memory_flat(served, tmp_path):
    from gradio_client import Client

    app, url = served
    results_dir = app.avgen_studio.workdir / "results"
    warm = Client(url, verbose=False, download_files=str(tmp_path / "warm"))
    predict(warm, "1", 0)  # lazy initialisation (first mp4, first figure) is not a leak
    before = memory_kb()

    latencies, failures, lock = [], [], threading.Lock()
    first_round = threading.Barrier(CLIENTS + 1)  # everyone served once: the memory every later request must not add to
    measured = threading.Barrier(CLIENTS + 1)

    def person(i: int) -> None:
        client = Client(url, verbose=False, download_files=str(tmp_path / f"client{i}"))
        for j in range(REQUESTS):
            if j == 1:
                first_round.wait(timeout=600)
                measured.wait(timeout=600)
            prompt = " ".join(str((i + j + k) % 10) for k in range(1 + (i + j) % 3))
            t0 = time.perf_counter()
            try:
                video, audio, figure, _, report = predict(client, prompt, 100 * i + j)
                assert Path(video).stat().st_size > 0 and Path(audio).stat().st_size > 0 and Path(figure).is_file()
                assert report["prompt"] == prompt
            except Exception as e:  # noqa: BLE001  (every failure is collected and reported)
                with lock:
                    failures.append(f"client {i} request {j}: {type(e).__name__}: {e}")
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=person, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    first_round.wait(timeout=600)
    warmed = memory_kb()
    measured.wait(timeout=600)
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t0
    after = memory_kb()
    kept = sorted(results_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)  # result folders have random names
    gradio_files = [p for p in (app.avgen_workdir / "gradio").rglob("*") if p.is_file()]
    print(f"\nload: {CLIENTS} clients x {REQUESTS} requests = {len(latencies)} in {wall:.1f} s; "
          f"latency median {sorted(latencies)[len(latencies) // 2]:.2f} s, slowest {max(latencies):.2f} s; "
          f"RSS {before['VmRSS'] / 1024:.0f} MB before, {warmed['VmRSS'] / 1024:.0f} MB after every client's first "
          f"request, {after['VmRSS'] / 1024:.0f} MB after all; Python objects {warmed['objects']} -> {after['objects']}; "
          f"peak RSS (VmHWM) {before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MB; "
          f"studio result folders {len(kept)} (keep_results={KEEP}, {len(latencies) + 1} made); "
          f"Gradio cache {len(gradio_files)} files, {sum(p.stat().st_size for p in gradio_files) / 2 ** 20:.1f} MB")
    assert not failures, failures[:5]
    assert len(latencies) == CLIENTS * REQUESTS and not any(t.is_alive() for t in threads)
    # the newest kept, the rest deleted: the last folder made is among the kept ones
    assert len(kept) == KEEP and kept[-1] == app.avgen_studio._made[-1]
    # Nothing accumulates: as many Python objects after 32 more requests as after the first 8. RSS rises
    # while malloc's per-thread arenas fill (8 client threads + the server's), then levels off (measured:
    # +200 MB over the first ~40 concurrent requests, flat over the next 30); one client alone: flat.
    assert after["objects"] - warmed["objects"] < 0.02 * warmed["objects"], "Python objects accumulate"
    assert after["VmRSS"] - before["VmRSS"] < 400 * 1024, "resident memory grew by more than 400 MB"


# ----------------------------------------------------------------------------- security defaults
def test_avgen_demo_binds_loopback_without_a_share_link_unless_asked(tiny_weights, monkeypatch):
    import avgen.demo.app as app_module
    from avgen.cli import main

    calls = []
    monkeypatch.setattr(app_module, "build_app", lambda **kw: ("app", kw))
    monkeypatch.setattr(app_module, "launch", lambda app, **kw: calls.append(kw))
    assert main(["demo", "--weights", str(tiny_weights)]) == 0
    assert main(["demo", "--weights", str(tiny_weights), "--host", "0.0.0.0", "--port", "8080", "--share"]) == 0
    assert calls == [{"host": "127.0.0.1", "port": 7860, "share": False},
                     {"host": "0.0.0.0", "port": 8080, "share": True}]


def test_launch_hands_gradio_the_limits_and_the_confinement(served, monkeypatch):
    import os

    from avgen.demo.app import launch

    app, _ = served
    seen = {}
    monkeypatch.setattr(app, "launch", lambda **kw: seen.update(kw))
    launch(app)
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
    assert seen["allowed_paths"] == [str(app.avgen_studio.results_dir)]  # randomly named, copied to the cache
    assert seen["max_file_size"] == f"{DemoLimits().max_upload_mb}mb"
    assert seen["run_history"] is False and seen["enable_monitoring"] is False
    assert not app.analytics_enabled and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert Path(os.environ["GRADIO_TEMP_DIR"]).is_relative_to(app.avgen_workdir)  # uploads land inside it


def test_the_server_listens_on_loopback_only(served):
    import os

    import psutil

    app, url = served
    port = urllib.parse.urlparse(url).port
    listening = [c.laddr.ip for c in psutil.Process(os.getpid()).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


def file_status(url: str):
    """path -> the HTTP status the studio at `url` answers a request for that file with."""
    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}") as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    return status


def test_files_outside_its_temp_folder_are_not_served(served, tmp_path):
    import httpx

    app, url = served
    probe = tmp_path / "probe.txt"
    probe.write_text("served")
    with probe.open("rb") as f:  # an upload lands in Gradio's cache, inside the studio's temp folder
        inside = httpx.post(f"{url}gradio_api/upload", files={"files": ("probe.txt", f, "text/plain")}).json()[0]
    assert Path(inside).is_relative_to(app.avgen_workdir)
    link = app.avgen_workdir / "studio" / "link-to-hostname"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/hostname")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the page")
    repo = Path(__file__).resolve().parents[1]

    status = file_status(url)

    assert status(str(inside)) == 200  # the control: its own files are served
    refused = {p: status(p) for p in [
        "/etc/passwd", "/proc/self/environ", str(secret), str(repo / "pyproject.toml"),
        str(app.avgen_studio.weights / "transformer" / "diffusion_pytorch_model.safetensors"),
        f"{app.avgen_workdir}/../{secret.parent.name}/secret.txt", f"{app.avgen_workdir}/../../../../etc/passwd",
        urllib.parse.quote(f"{app.avgen_workdir}/../../../../etc/passwd", safe=""), str(link), "pyproject.toml"]}
    assert all(code in (403, 404) for code in refused.values()), refused


@pytest.fixture
def own_studio(tiny_weights, tmp_path_factory):  # noqa: F811
    """A studio of its own: another test in this module stops the shared one."""
    from avgen.demo.app import build_app

    app = build_app(tiny_weights, "cpu", seeds_dir=tmp_path_factory.mktemp("no-seeds"),
                    workdir=tmp_path_factory.mktemp("privacy-app"), warm_up=False)
    with serving(app) as url:
        yield app, url


def test_a_visitor_cannot_fetch_another_visitors_results(own_studio, tmp_path):
    """What visitor B knows (the URLs of its own results, the studio's temp folder they reveal) gives no
    way to visitor A's clip, wav or figure: every result reaches its visitor as Gradio's copy under a
    keyed hash of its content, the studio's own result folders are never named to anyone, and they are
    named by 128 random bits, so they cannot be counted down or listed either."""
    from gradio_client import Client

    app, url = own_studio

    status = file_status(url)

    results = app.avgen_workdir / "studio" / "results"
    before = set(results.iterdir()) if results.is_dir() else set()
    got = {}
    for who, prompt in (("A", "7"), ("B", "2 5")):
        c = Client(url, download_files=False, verbose=False)
        got[who] = c.predict("t2av", prompt, 0, 2, 4.0, 4.0, 1.0, "euler", "cpu", None, None, api_name="/generate")
    folders = sorted(set(results.iterdir()) - before, key=lambda d: d.stat().st_mtime)
    assert len(folders) == 2  # A's and B's result folders on the server
    a_folder, b_folder = folders
    for who, outputs in got.items():
        named = [o["path"] for o in outputs[:3]]  # clip, wav, figure: as the visitor receives them
        assert all(str(results) not in p for p in named), named  # no result folder is ever disclosed
        assert all(status(p) == 200 for p in named)  # the visitor's own copies are served
        assert all(len(Path(p).parent.name) == 64 for p in named)  # each under a keyed hash of its content
    # what B could try from what it knows: the studio's folder, numbered or neighbouring result names
    workdir = str(Path(got["B"][0]["path"]).parents[2])  # B's URL reveals the studio's temp folder
    assert workdir == str(app.avgen_workdir)
    guesses = [f"{workdir}/studio/results", f"{workdir}/studio/results/000000/clip.mp4",
               f"{workdir}/studio/results/000001/clip.mp4", f"{workdir}/studio",
               f"{workdir}/studio/results/{b_folder.name}/../{a_folder.name[:8]}/clip.mp4"]
    assert all(status(g) in (403, 404) for g in guesses), {g: status(g) for g in guesses}
    assert len(a_folder.name) == 32 and int(a_folder.name, 16) >= 0 and a_folder.name != b_folder.name


def test_an_upload_over_the_size_limit_is_refused_by_gradio(served, tmp_path):
    import httpx

    _, url = served
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (DemoLimits().max_upload_bytes + 1024))
    with big.open("rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.wav", f, "audio/wav")}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    small = tmp_path / "small.wav"
    small.write_bytes(b"\0" * 1024)
    with small.open("rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": ("small.wav", f, "audio/wav")}, timeout=60)
    assert r.status_code == 200 and Path(r.json()[0]).is_relative_to(served[0].avgen_workdir)
