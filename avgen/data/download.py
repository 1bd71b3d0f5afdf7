"""`avgen data download`: fetch Talking Digits' sources from their publishers and verify them.

The only code in avgen that reaches the internet, and only when a user asks. Every file is
checked against SHA-256 sums written in this project (`manifest/`): FSDD per recording
(release v1.0.10), MNIST by its *uncompressed* contents (mirrors re-compress the .gz).
Downloads go to a temporary name and are renamed when complete; a file that fails its
check is deleted and named in the error.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .sources import MNIST_FILES

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_PREFIX = "free-spoken-digit-dataset-1.0.10/recordings/"
MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_SHA256_UNCOMPRESSED = {
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MANIFEST = Path(__file__).with_name("manifest") / "fsdd-v1.0.10.sha256"


class DownloadError(RuntimeError):
    pass


def fsdd_manifest() -> dict[str, str]:
    """recording file name -> sha256."""
    out = {}
    for line in MANIFEST.read_text().splitlines():
        h, name = line.split()
        out[Path(name).name] = h
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except Exception as e:
        raise DownloadError(f"could not download {url}: {e}") from None


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify_fsdd(root: Path) -> list[str]:
    """Names of recordings that are missing or do not match the manifest (empty = all good)."""
    rec = Path(root) / "fsdd" / "recordings"
    bad = []
    for name, h in sorted(fsdd_manifest().items()):
        p = rec / name
        if not p.is_file() or sha256(p.read_bytes()) != h:
            bad.append(name)
    return bad


def verify_mnist(root: Path) -> list[str]:
    bad = []
    for name, h in MNIST_SHA256_UNCOMPRESSED.items():
        p = Path(root) / "mnist" / name
        try:
            ok = sha256(gzip.decompress(p.read_bytes())) == h
        except (OSError, EOFError, gzip.BadGzipFile):
            ok = False
        if not ok:
            bad.append(name)
    return bad


def download_fsdd(root: Path, url: str = FSDD_URL, log=print) -> None:
    manifest = fsdd_manifest()
    log(f"downloading FSDD v1.0.10 from {url}")
    data = fetch(url)
    rec = Path(root) / "fsdd" / "recordings"
    found = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for m in tar:
                if not (m.isfile() and m.name.startswith(FSDD_PREFIX)):
                    continue
                name = m.name[len(FSDD_PREFIX):]
                if name not in manifest:  # only the files we know, never paths from the archive
                    continue
                found[name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{url}: not a readable tar.gz archive ({e})") from None
    missing = sorted(set(manifest) - set(found))
    wrong = sorted(n for n, b in found.items() if sha256(b) != manifest[n])
    if missing or wrong:
        raise DownloadError(f"FSDD archive {url} failed verification: {len(missing)} missing "
                            f"(e.g. {missing[:3]}), {len(wrong)} with wrong SHA-256 (e.g. {wrong[:3]}); nothing was written")
    for name, b in found.items():
        atomic_write(rec / name, b)
    (Path(root) / "fsdd" / "SHA256SUMS").write_text(MANIFEST.read_text())
    log(f"FSDD: {len(found)} recordings verified -> {rec}")


def download_mnist(root: Path, base: str = MNIST_BASE, log=print) -> None:
    for name, h in MNIST_SHA256_UNCOMPRESSED.items():
        url = base.rstrip("/") + "/" + name
        log(f"downloading {url}")
        data = fetch(url)
        try:
            got = sha256(gzip.decompress(data))
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DownloadError(f"{url}: not a gzip file ({e}); nothing was written for {name}") from None
        if got != h:
            raise DownloadError(f"{url}: uncompressed SHA-256 {got} does not match the expected {h}; "
                                f"nothing was written for {name}")
        atomic_write(Path(root) / "mnist" / name, data)
    log(f"MNIST test set verified -> {Path(root) / 'mnist'}")


def download(root, fsdd_url: str = FSDD_URL, mnist_base: str = MNIST_BASE, force: bool = False, log=print) -> Path:
    """Download and verify both sources into `root`; skip whatever already verifies."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if force or verify_fsdd(root):
        download_fsdd(root, fsdd_url, log)
    else:
        log("FSDD already present and verified")
    if force or verify_mnist(root):
        download_mnist(root, mnist_base, log)
    else:
        log("MNIST already present and verified")
    return root


assert set(MNIST_SHA256_UNCOMPRESSED) == set(MNIST_FILES.values())
