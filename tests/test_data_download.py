"""Downloading for real, against an HTTP server on 127.0.0.1 started by the test."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import socket
import struct
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bioplaus.data import DataError, FileSpec, get_spec, load_dataset
from bioplaus.data.fetch import download_file, locate_files

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def idx_gz(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, np.uint8)
    return gzip.compress(struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())


class Handler(SimpleHTTPRequestHandler):
    """Serves the folder; under /die/ it promises the whole file and then hangs up early."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path.startswith("/die/"):
            body = (Path(self.directory) / self.path[len("/die/") :]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


def serving(tmp_path, handler=None):
    """``(base_url, served_folder)`` of a live server (``handler``: its request handler class, ``Handler``
    by default), shut down when the generator is closed: the body of a fixture."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler or Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def server(tmp_path):
    """``(base_url, served_folder)`` of a live server; shut down after the test."""
    yield from serving(tmp_path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOPLAUS_DATA", raising=False)
    monkeypatch.delenv("BIOPLAUS_DATA_MIRROR", raising=False)
    return tmp_path / "cache" / "bioplaus"


def tiny_idx_dataset(served: Path, base_url: str, name="tiny-dl"):
    """Serve four tiny IDX files; return a spec whose URLs and md5s point at them."""
    rng = np.random.default_rng(0)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (12, 28, 28)),
        IDX_NAMES[1]: rng.integers(0, 10, 12),
        IDX_NAMES[2]: rng.integers(0, 256, (5, 28, 28)),
        IDX_NAMES[3]: rng.integers(0, 10, 5),
    }
    files = []
    for fname, a in arrays.items():
        blob = idx_gz(a)
        (served / fname).write_bytes(blob)
        files.append(FileSpec(fname, f"{base_url}/{fname}", "md5", hashlib.md5(blob).hexdigest()))
    spec = dataclasses.replace(get_spec("mnist"), name=name, files=tuple(files), num_train=12, num_test=5)
    return spec, arrays


def files_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_success_caches_verified_files(server, cache):
    base_url, served = server
    spec, arrays = tiny_idx_dataset(served, base_url)
    ds = load_dataset(spec, system_dirs=())
    assert files_under(cache) == sorted(IDX_NAMES)  # nothing else (no .part files)
    for f in spec.files:
        assert hashlib.md5((cache / spec.name / f.filename).read_bytes()).hexdigest() == f.digest
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays[IDX_NAMES[0]])
    np.testing.assert_array_equal(ds.y_test, arrays[IDX_NAMES[3]])
    assert str(cache / spec.name) in ds.source
    # second time: found in the cache, no server needed
    (served / IDX_NAMES[0]).unlink()
    again = load_dataset(spec, system_dirs=(), download=False)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_mirror_override_by_environment(server, cache, monkeypatch):
    base_url, served = server
    spec, _ = tiny_idx_dataset(served, base_url)
    spec = dataclasses.replace(
        spec, files=tuple(dataclasses.replace(f, url="http://invalid.invalid/" + f.filename) for f in spec.files)
    )
    monkeypatch.setenv("BIOPLAUS_DATA_MIRROR", base_url + "/")
    ds = load_dataset(spec, system_dirs=())
    assert len(ds.y_train) == 12 and files_under(cache) == sorted(IDX_NAMES)


def test_checksum_mismatch_caches_nothing(server, cache):
    base_url, served = server
    spec, _ = tiny_idx_dataset(served, base_url)
    bad = dataclasses.replace(spec.files[1], digest="0" * 32)
    spec = dataclasses.replace(spec, files=(spec.files[0], bad, *spec.files[2:]))
    with pytest.raises(DataError) as err:
        load_dataset(spec, system_dirs=())
    msg = str(err.value)
    assert "train-labels-idx1-ubyte.gz: checksum mismatch" in msg and "0" * 32 in msg and "nothing was cached" in msg
    assert "\n" not in msg
    assert IDX_NAMES[1] not in files_under(cache)
    assert not any(n.endswith(".part") for n in files_under(cache))


def test_server_dying_mid_transfer_caches_nothing(server, cache):
    base_url, served = server
    spec, _ = tiny_idx_dataset(served, base_url)
    f = spec.files[0]
    dest = cache / "x" / f.filename
    with pytest.raises(DataError, match=r"stopped after \d+ of \d+ bytes; nothing was cached"):
        download_file(f"{base_url}/die/{f.filename}", dest, "md5", f.digest, progress=False)
    assert files_under(cache) == []
    # through load_dataset too: the error names the dataset and where files may be put
    spec = dataclasses.replace(spec, files=tuple(dataclasses.replace(g, url=f"{base_url}/die/{g.filename}")
                                                 for g in spec.files))  # fmt: skip
    with pytest.raises(DataError, match=r"^tiny-dl: files not found and .*stopped after .*; put .* in one of "):
        load_dataset(spec, system_dirs=())
    assert files_under(cache) == []


def test_offline_connection_refused_is_a_clear_error(cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = dataclasses.replace(get_spec("fashion-mnist"), name="fashion-mnist")
    with pytest.raises(DataError) as err:
        locate_files(spec, mirror=f"http://127.0.0.1:{port}", system_dirs=(), progress=False)
    msg = str(err.value)
    assert msg.startswith("fashion-mnist: files not found and train-images-idx3-ubyte.gz: download from")
    assert "refused" in msg.lower() and str(cache) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert files_under(cache) == []
    assert not cache.parent.exists()  # not even an empty cache folder is left behind


def test_http_404_is_a_clear_error(server, cache):
    base_url, _ = server
    with pytest.raises(DataError, match=r"^nothing\.gz: download from .* failed \(HTTPError: HTTP Error 404"):
        download_file(f"{base_url}/nothing.gz", cache / "nothing.gz", "md5", "0" * 32, progress=False)
    assert files_under(cache) == []
