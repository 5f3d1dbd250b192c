"""Bounded data and downloads (issue 24, class 6): every dataset file's size is known (the registry), a
download stops at it (a server that announces more is refused before anything is written, one that
sends more is cut off there), a decompression stops at the content's size, URLs are https wherever the
host serves it, SHA-256 is recorded beside MD5 where it could be computed here (and checked), and a
redirect from https to http is never followed.

Downloads run against an HTTP server on 127.0.0.1 started by the test (``RichHandler``: the served folder,
plus routes that lie about a file's length, stream without end, or redirect).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_cli import listing
from test_data_download import Handler, cache, serving, tiny_idx_dataset  # noqa: F401 -- cache: a fixture

from bioplaus.data import DATASETS, DataError, load_dataset
from bioplaus.data.dataset import EMBEDDED_DIR, embedded_files
from bioplaus.data.fetch import _NoDowngrade, download_file
from bioplaus.data.registry import EMBEDDED_SHA256, FileSpec

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
# Hosts that serve their dataset over plain http only (S3's website endpoints have no https).
HTTP_ONLY_HOSTS = {"fashion-mnist.s3-website.eu-central-1.amazonaws.com"}


class RichHandler(Handler):
    """The folder, and: /announce/<n>/<file> says n bytes and sends the file; /endless/ streams zeros
    without a length, until the client stops reading; /nolength/<file> sends the file without its length;
    /to/<url> redirects there."""

    def do_GET(self):
        parts = self.path.split("/")
        if parts[1] in ("announce", "endless", "nolength"):
            self.send_response(200)
            if parts[1] == "announce":
                self.send_header("Content-Length", parts[2])
            self.end_headers()
            try:
                if parts[1] == "endless":
                    for _ in range(400):  # 400 MiB, if nobody stops reading
                        self.wfile.write(bytes(1 << 20))
                else:
                    self.wfile.write((Path(self.directory) / parts[-1]).read_bytes())
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        if parts[1] == "to":
            self.send_response(302)
            self.send_header("Location", urllib.parse.unquote(self.path[len("/to/"):]))
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def rich_server(tmp_path):
    yield from serving(tmp_path, RichHandler)


# ---------------------------------------------------------------------- the registry
DOWNLOADED = [(name, f) for name, spec in sorted(DATASETS.items()) for f in spec.files]


@pytest.mark.parametrize("name,file", DOWNLOADED, ids=[f"{n}/{f.filename}" for n, f in DOWNLOADED])
def test_every_file_of_the_registry_has_its_bounds(name, file: FileSpec):
    assert file.content is not None and file.content > 0  # bounds every decompression
    assert file.download_limit is not None  # bounds every download
    if file.size is not None:
        assert file.download_limit == file.size
    assert file.algorithm == "md5" and len(file.digest) == 32
    host = urllib.parse.urlsplit(file.url)
    assert host.scheme == "https" or host.hostname in HTTP_ONLY_HOSTS, file.url


def test_the_recorded_sha256_are_those_of_the_files_here():
    """Fashion-MNIST's content digests against Debian's files (the same content, re-compressed), the
    embedded subset's against the package."""
    for name, path in embedded_files("fashion-mnist-mini").items():
        import lzma

        assert hashlib.sha256(lzma.decompress(path.read_bytes())).hexdigest() == EMBEDDED_SHA256[
            "fashion-mnist-mini"][name]
    assert EMBEDDED_DIR.is_dir()
    if not SYSTEM_FASHION.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    for f in DATASETS["fashion-mnist"].files:
        content = gzip.decompress((SYSTEM_FASHION / f.filename).read_bytes())
        assert len(content) == f.content and hashlib.sha256(content).hexdigest() == f.content_sha256
        # and its size as Zalando distributes it: Debian's gzip less the file name in the header
        assert (SYSTEM_FASHION / f.filename).stat().st_size + len(f.filename) - len(".gz") + 1 == f.size


def test_an_altered_embedded_file_is_refused(tmp_path, monkeypatch):
    import lzma

    from bioplaus.data import dataset

    for src in EMBEDDED_DIR.joinpath("fashion-mnist-mini").iterdir():
        (tmp_path / "fashion-mnist-mini").mkdir(exist_ok=True)
        data = src.read_bytes()
        if src.name.startswith("t10k-labels"):
            content = bytearray(lzma.decompress(data))
            content[-1] = (content[-1] + 1) % 10  # one label changed
            data = lzma.compress(bytes(content))
        (tmp_path / "fashion-mnist-mini" / src.name).write_bytes(data)
    monkeypatch.setattr(dataset, "EMBEDDED_DIR", tmp_path)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.xz: its content is not the one recorded"):
        load_dataset("fashion-mnist-mini")


# ---------------------------------------------------------------------- downloads stop at the size
@pytest.fixture
def one_file(rich_server, cache):  # noqa: F811
    base_url, served = rich_server
    blob = os.urandom(50_000)
    (served / "f.gz").write_bytes(blob)
    return base_url, blob, hashlib.md5(blob).hexdigest(), cache / "x" / "f.gz"


def test_a_server_that_announces_more_than_the_file_has_is_refused_before_anything_is_written(one_file, tmp_path):
    base_url, blob, md5, dest = one_file
    before = listing(tmp_path)
    with pytest.raises(DataError, match="announces 400000000 bytes, more than the 50000 this file has"):
        download_file(f"{base_url}/announce/400000000/f.gz", dest, "md5", md5, limit=len(blob), progress=False)
    assert listing(tmp_path) == before


def test_a_server_that_sends_more_than_the_file_has_is_cut_off_there(one_file, tmp_path):
    """The issue's case: a mirror that streams 400 MB for a 9.9 MB file filled the cache first."""
    base_url, blob, md5, dest = one_file
    before = listing(tmp_path / "served")
    with pytest.raises(DataError, match="sent more than the 50000 bytes this file has; the download was stopped"):
        download_file(f"{base_url}/endless/f.gz", dest, "md5", md5, limit=len(blob), progress=False)
    assert not (tmp_path / "cache").exists()  # the cache folders it made for the download: removed again
    assert listing(tmp_path / "served") == before


def test_a_file_of_its_size_arrives(one_file):
    base_url, blob, md5, dest = one_file
    download_file(f"{base_url}/nolength/f.gz", dest, "md5", md5, limit=len(blob), progress=False)
    assert dest.read_bytes() == blob


def test_the_content_digest_is_checked_after_a_download(rich_server, cache, tmp_path):  # noqa: F811
    base_url, served = rich_server
    content = bytes(range(256)) * 100
    blob = gzip.compress(content)
    (served / "f.gz").write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    dest = cache / "x" / "f.gz"
    with pytest.raises(DataError, match="does not have its recorded SHA-256"):
        download_file(f"{base_url}/f.gz", dest, "md5", md5, content_sha256="0" * 64, progress=False)
    assert not dest.exists()
    download_file(f"{base_url}/f.gz", dest, "md5", md5, content_sha256=hashlib.sha256(content).hexdigest(),
                  progress=False)
    assert dest.read_bytes() == blob


def test_a_dataset_download_is_bounded_by_its_registry_sizes(rich_server, cache, tmp_path):  # noqa: F811
    """Through load_dataset: the file's registered size is the limit of its download."""
    base_url, served = rich_server
    spec, _ = tiny_idx_dataset(served, base_url)
    first = dataclasses.replace(spec.files[0], url=f"{base_url}/endless/x", size=1000)
    spec = dataclasses.replace(spec, files=(first, *spec.files[1:]))
    with pytest.raises(DataError, match="sent more than the 1000 bytes"):
        load_dataset(spec, system_dirs=())
    assert not cache.exists()


# ---------------------------------------------------------------------- no downgrade
def _redirect(old: str, new: str):
    return _NoDowngrade().redirect_request(urllib.request.Request(old), None, 302, "Found", {}, new)


@pytest.mark.parametrize("new", ["http://example.org/f.gz", "ftp://example.org/f.gz", "file:///etc/passwd"])
def test_a_redirect_from_https_to_anything_else_is_refused(new):
    with pytest.raises(DataError, match="redirects to .* never carried on without it"):
        _redirect("https://example.org/f.gz", new)


def test_other_redirects_are_followed(rich_server, cache):  # noqa: F811
    assert _redirect("https://example.org/f.gz", "https://mirror.example.org/f.gz") is not None
    assert _redirect("http://example.org/f.gz", "https://example.org/f.gz") is not None
    base_url, served = rich_server
    blob = b"redirected"
    (served / "f.gz").write_bytes(blob)
    dest = cache / "x" / "f.gz"
    to = urllib.parse.quote(f"{base_url}/f.gz", safe="")
    download_file(f"{base_url}/to/{to}", dest, "md5", hashlib.md5(blob).hexdigest(), progress=False)
    assert dest.read_bytes() == blob
