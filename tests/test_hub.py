"""Download by name: a verified cache, atomic downloads, clear errors offline; against a local
HTTP server on 127.0.0.1 serving generated files."""

import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest
from helpers import FIXTURES
from mindspore import Tensor

import clip
from clip.hub import MODELS, available_models, download

JIT = FIXTURES / "checkpoints" / "openai_jit.pt"


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files[path]` with a Content-Length; counts requests."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A server on a free port of 127.0.0.1, stopped after the test; returns (base URL, handler)."""
    handler = type("TestHandler", (Handler,), {"files": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def publish(server, data: bytes, served: bytes | None = None, name: str = "tiny.pt") -> str:
    """A URL in OpenAI's form, SHA-256 of `data` as its parent; serves `served` (default `data`)."""
    base, handler = server
    path = f"/models/{hashlib.sha256(data).hexdigest()}/{name}"
    handler.files[path] = data if served is None else served
    return base + path


def test_downloads_verifies_and_then_uses_the_cache(server, tmp_path):
    data = JIT.read_bytes()
    url = publish(server, data)
    path = download("tiny", tmp_path, url=url)
    assert path == tmp_path / "tiny.pt" and path.read_bytes() == data
    assert download("tiny", tmp_path, url=url) == path
    assert len(server[1].requests) == 1  # the second call was served from the cache
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt"]


def test_a_wrong_cached_file_is_downloaded_again(server, tmp_path):
    data = b"weights" * 1000
    url = publish(server, data)
    (tmp_path / "tiny.pt").write_bytes(b"stale")
    with pytest.warns(UserWarning, match="wrong SHA-256; downloading it again"):
        path = download("tiny", tmp_path, url=url)
    assert path.read_bytes() == data


def test_a_corrupted_download_is_refused_and_leaves_nothing(server, tmp_path):
    data = b"weights" * 1000
    url = publish(server, data, served=data[:-1] + b"X")
    with pytest.raises(
        RuntimeError, match="SHA-256 is [0-9a-f]{64}, not [0-9a-f]{64}; nothing was kept"
    ):
        download("tiny", tmp_path, url=url)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_gives_the_url_and_the_path(tmp_path):
    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip/models/{'0' * 64}/ViT-B-32.pt"
    with pytest.raises(RuntimeError) as caught:
        download("ViT-B/32", tmp_path, url=url)
    message = str(caught.value)
    assert f"Fetch {url} by hand and put it at {tmp_path / 'ViT-B-32.pt'}" in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_reported_the_same_way(server, tmp_path):
    url = server[0] + f"/missing/{'0' * 64}/RN50.pt"
    with pytest.raises(RuntimeError, match="Cannot download RN50 .*Not Found.* Fetch .* by hand"):
        download("RN50", tmp_path, url=url)


def test_unknown_name_lists_the_models(tmp_path):
    with pytest.raises(
        RuntimeError, match=r"Model ViT-H/14 not found; available models = \['RN50'"
    ):
        download("ViT-H/14", tmp_path)


def test_a_directory_in_the_way_is_an_error(tmp_path):
    (tmp_path / "ViT-B-32.pt").mkdir()
    with pytest.raises(RuntimeError, match="exists and is not a regular file"):
        download("ViT-B/32", tmp_path)


def test_default_root_is_the_users_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = b"weights"
    assert download("tiny", url=publish(server, data)) == tmp_path / ".cache/clip/tiny.pt"


def test_urls_carry_their_sha256_and_file_name():
    assert available_models() == list(MODELS)
    for name, url in MODELS.items():
        *_, sha, file = url.split("/")
        assert len(sha) == 64 and int(sha, 16) >= 0
        assert file == name.replace("/", "-").replace("@", "-") + ".pt"


def test_load_by_name_downloads_then_runs(server, tmp_path, monkeypatch):
    url = publish(server, JIT.read_bytes(), name="ViT-B-32.pt")
    monkeypatch.setitem(MODELS, "ViT-B/32", url)
    model, preprocess = clip.load("ViT-B/32", download_root=tmp_path)
    assert (tmp_path / "ViT-B-32.pt").read_bytes() == JIT.read_bytes() and preprocess.n_px == 24
    io = dict(np.load(FIXTURES / "checkpoints" / "io.npz"))
    features = model.encode_image(Tensor(io["images"])).asnumpy()
    assert np.abs(features - io["image_features"]).max() <= 1e-4 * np.abs(features).max()
