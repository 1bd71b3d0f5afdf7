"""`avgen data download` against archives shaped like the publishers', served on loopback."""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import tarfile
import threading

import pytest

from avgen.cli import main
from avgen.data import make_dataset
from avgen.data.download import FSDD_PREFIX, verify_fsdd, verify_mnist


@pytest.fixture()
def publisher(data_root, tmp_path):
    """A loopback HTTP server with FSDD's release archive layout and MNIST's .gz files."""
    site = tmp_path / "site"
    (site / "mnist").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(data_root / "fsdd" / "recordings", arcname=FSDD_PREFIX.rstrip("/"))
        info = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/README.md")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    (site / "v1.0.10.tar.gz").write_bytes(buf.getvalue())
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        raw = gzip.decompress((data_root / "mnist" / name).read_bytes())
        (site / "mnist" / name).write_bytes(gzip.compress(raw, compresslevel=1))  # other bytes, same contents
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield site, base
    server.shutdown()


@pytest.mark.data
@pytest.mark.slow
def test_download_and_verify(publisher, tmp_path, capsys):
    site, base = publisher
    root = tmp_path / "data"
    rc = main(["data", "download", "--root", str(root), "--fsdd-url", f"{base}/v1.0.10.tar.gz",
               "--mnist-base", f"{base}/mnist"])
    assert rc == 0
    assert verify_fsdd(root) == [] and verify_mnist(root) == []
    assert not (root / "fsdd" / "recordings" / "README.md").exists()
    ds = make_dataset("talking-digits", data_root=root)
    assert len(ds[0].events) >= 1
    assert main(["data", "verify", "--root", str(root)]) == 0
    # second call: already verified, nothing fetched
    assert main(["data", "download", "--root", str(root), "--fsdd-url", f"{base}/gone.tar.gz",
                 "--mnist-base", f"{base}/gone"]) == 0
    # a tampered recording on disk is found by verify
    (root / "fsdd" / "recordings" / "3_yweweler_7.wav").write_bytes(b"RIFF")
    assert main(["data", "verify", "--root", str(root)]) == 2
    assert "3_yweweler_7.wav" in capsys.readouterr().err


@pytest.mark.data
def test_download_rejects_tampered_files(publisher, tmp_path, capsys):
    site, base = publisher
    root = tmp_path / "data"
    (root / "fsdd" / "recordings").mkdir(parents=True)
    rc = main(["data", "download", "--root", str(root), "--fsdd-url", f"{base}/nothing-here.tar.gz",
               "--mnist-base", f"{base}/mnist"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "nothing-here.tar.gz" in err and "Traceback" not in err
    # FSDD fails before MNIST; now give a broken archive
    (site / "broken.tar.gz").write_bytes(b"not an archive")
    rc = main(["data", "download", "--root", str(root), "--fsdd-url", f"{base}/broken.tar.gz",
               "--mnist-base", f"{base}/mnist"])
    assert rc == 2 and "not a readable tar.gz" in capsys.readouterr().err
    assert not any((root / "fsdd" / "recordings").iterdir())  # nothing written half-way


@pytest.mark.data
def test_download_rejects_wrong_mnist_contents(publisher, tmp_path):
    from avgen.data.download import DownloadError, download_mnist
    site, base = publisher
    raw = bytearray(gzip.decompress((site / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (site / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DownloadError, match="t10k-labels-idx1-ubyte.gz.*does not match"):
        download_mnist(tmp_path / "d", f"{base}/mnist", log=lambda *a: None)
    assert not (tmp_path / "d" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
