"""Hostile inputs (issue #16): extreme images, unreadable files, misbehaving download servers and
a tampered feature cache. Servers run on 127.0.0.1 in a thread; huge allocations in a capped
interpreter (helpers.run_isolated)."""

import errno
import hashlib
import http.server
import io
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from helpers import run_isolated
from PIL import Image

from clip.hub import download
from clip.transform import MAX_RESIZED_PIXELS, Preprocess, center_crop
from workbench import features
from workbench.data import load_image

# --- images ---------------------------------------------------------------------------------


def test_an_extreme_aspect_ratio_is_refused_in_little_memory():
    result = run_isolated(
        """
import io
import numpy as np
from PIL import Image
from clip.transform import Preprocess
buffer = io.BytesIO()
Image.new("L", (1, 2_000_000), 128).save(buffer, "PNG")  # 4 KB; 224 x 448,000,000 if resized
assert len(buffer.getvalue()) < 10_000
for image in (Image.open(buffer), np.full((1, 2_000_000, 3), 128, np.uint8)):
    try:
        Preprocess(224)(image)
    except ValueError as err:
        print(err)
""",
        memory_mib=2048,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tall, wide = result.stdout.splitlines()
    assert "a 1x2000000 image (width x height)" in tall and "224x448000000" in tall
    assert "a 2000000x1 image" in wide and "448000000x224" in wide
    assert "crop it to an aspect ratio under 334:1" in tall


@pytest.mark.parametrize("size, n", [((3, 400), 32), ((500, 4), 32), ((1, 300), 224),
                                     ((300, 1), 224), ((60, 5000), 448)])  # fmt: skip
def test_ordinary_aspect_ratios_are_accepted(size, n):
    (w, h), _ = center_crop(size, n)  # the fixtures' extremes, 1:300 at 224 px, 1:83 at 448
    assert w * h <= MAX_RESIZED_PIXELS
    assert Preprocess(n)(Image.new("RGB", size)).shape == (3, n, n)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with one byte of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))  # fmt: skip


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30_000, 30_000))  # 900 M pixels
    result = run_isolated(
        f"""
from workbench.data import load_image

try:
    load_image({str(path)!r})
except ValueError as err:
    print(err)
""",
        memory_mib=1024,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(path) in result.stdout and "decompression bomb" in result.stdout


def _bad_files(tmp_path) -> dict:
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 50, 3), np.uint8)).save(
        good, "PNG"
    )
    files = {
        "text.png": b"not an image at all",
        "empty.jpg": b"",
        "truncated.png": good.getvalue()[: len(good.getvalue()) // 2],
        "short_header.png": _png_header_only(40, 40),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in files}


def test_unreadable_files_are_named_by_load_image(tmp_path):
    for path in _bad_files(tmp_path).values():
        with pytest.raises(ValueError, match=f"{path}.* is not a readable image"):
            load_image(path)
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        load_image(tmp_path)


def test_features_name_the_file_that_fails(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    for path in _bad_files(tmp_path).values():
        for cache in (None, tmp_path / "cache"):
            with pytest.raises(ValueError, match=str(path)):
                features.image_features(model, preprocess, [path], cache=cache, progress=False)
    Image.new("L", (1, 100_000)).save(tmp_path / "tall.png")
    with pytest.raises(ValueError, match=f"{tmp_path / 'tall.png'}: .* aspect ratio under"):
        features.image_features(model, preprocess, [tmp_path / "tall.png"], progress=False)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels: twice over, an error
    with pytest.raises(ValueError, match=f"{tmp_path / 'big.png'}.*decompression bomb"):
        features.image_features(model, preprocess, [tmp_path / "big.png"], progress=False)


# --- downloads ------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    """Runs `routes[path](self)`; each route writes a whole (mis)behaving response."""

    routes: dict = {}

    def do_GET(self):
        try:
            self.routes[self.path](self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(route, data) -> a URL in OpenAI's form (data's SHA-256, a file name) for `route`."""
    handler = type("Routes", (Handler,), {"routes": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def publish(route, data: bytes = b"weights") -> str:
        path = f"/models/{hashlib.sha256(data).hexdigest()}/tiny.pt"
        handler.routes[path] = route
        return f"http://127.0.0.1:{httpd.server_address[1]}{path}"

    yield publish
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _headers(handler, **headers) -> None:
    handler.send_response(200)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), str(value))
    handler.end_headers()


def trickle(handler):
    _headers(handler, Content_Length=1000)
    for _ in range(1000):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(0.1)


def endless(handler):
    _headers(handler)  # no length: the body ends when the connection closes, that is never
    block = b"x" * 65536
    for _ in range(100_000):
        handler.wfile.write(block)


def huge_announced(handler):
    _headers(handler, Content_Length=10**12)
    handler.wfile.write(b"x" * 1000)


def truncated_chunked(handler):
    handler.protocol_version = "HTTP/1.1"
    _headers(handler, Transfer_Encoding="chunked")
    handler.wfile.write(b"7\r\nweights\r\n3\r\nwei")  # then the connection closes
    handler.close_connection = True


def truncated_length(handler):
    _headers(handler, Content_Length=100)
    handler.wfile.write(b"weights")


def wrong_hash(handler):
    _headers(handler, Content_Length=7)
    handler.wfile.write(b"weighty")


@pytest.mark.parametrize(
    "route, options, match",
    [
        (trickle, {"timeout": 1.0}, r"not complete after the 1 s timeout: \d+ of 1000 bytes"),
        (endless, {"max_bytes": 1 << 20}, "more than max_bytes=1048576 bytes sent"),
        (huge_announced, {"max_bytes": 1 << 20}, "1000000000000 bytes announced, over max_bytes"),
        (truncated_chunked, {}, r"broken response after 10 bytes: IncompleteRead\("),
        (truncated_length, {}, "the connection closed after 7 of 100 bytes"),
        (wrong_hash, {}, "SHA-256 is [0-9a-f]{64}, not [0-9a-f]{64}; nothing was kept"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_a_misbehaving_server_is_an_error_and_leaves_nothing(
    serve, tmp_path, route, options, match
):
    url = serve(route)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=match) as caught:
        download("tiny", tmp_path, url=url, **options)
    assert time.monotonic() - start < 10
    assert str(tmp_path / "tiny.pt") in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_files_are_removed(serve, tmp_path):
    names = ".RN50.pt.0a1b2c3d.part", ".tiny.pt.00000000.part", "notes.part"
    old, fresh, other = (tmp_path / name for name in names)
    for path in (old, fresh, other):
        path.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    for path in (old, other):
        os.utime(path, (two_days_ago, two_days_ago))

    def ok(handler):
        _headers(handler, Content_Length=7)
        handler.wfile.write(b"weights")

    assert download("tiny", tmp_path, url=serve(ok)).read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name, "tiny.pt"])


# --- the feature cache ----------------------------------------------------------------------


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8) for i in range(n)]


def _counted(monkeypatch, model) -> list:
    calls, original = [], model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(len(x)) or original(x))
    return calls


def _entry(cache) -> tuple[str, os.PathLike]:
    (path,) = cache.iterdir()
    key, checksum, _ = path.name.split(".")
    assert checksum == hashlib.sha256(np.load(path).tobytes()).hexdigest()
    return key, path


def _tampered(array: np.ndarray) -> list:
    """Entries a cache must not return, though named by their own checksum: other shapes, NaN."""
    nan = array.copy()
    nan[0, 0] = np.nan
    return [np.zeros((len(array), array.shape[1] + 1), np.float32), array[:, :-1].copy(),
            array[:-1].copy(), array.astype(np.float64), nan]  # fmt: skip


def test_a_tampered_entry_is_computed_again(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    cache, images = tmp_path / "cache", _images()
    first = features.image_features(model, preprocess, images, cache=cache, progress=False)
    key, path = _entry(cache)
    calls = _counted(monkeypatch, model)
    for bad in _tampered(first):
        path.unlink()
        checksum = hashlib.sha256(bad.tobytes()).hexdigest()  # a name that matches the bytes
        np.save(cache / f"{key}.{checksum}.npy", bad)
        got = features.image_features(model, preprocess, images, cache=cache)
        assert np.array_equal(got, first)
        _, path = _entry(cache)  # the tampered entry replaced by the right one
    bit_flipped = bytearray(path.read_bytes())
    bit_flipped[-5] ^= 0x08  # one bit of the stored bytes, the name unchanged
    path.write_bytes(bytes(bit_flipped))
    assert np.array_equal(features.image_features(model, preprocess, images, cache=cache), first)
    assert len(calls) == len(_tampered(first)) + 1 and _entry(cache)[1] == path


def test_an_entry_claiming_a_huge_shape_is_not_read(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    cache, images = tmp_path / "cache", _images(2)
    first = features.image_features(model, preprocess, images, cache=cache, progress=False)
    key, path = _entry(cache)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2, 10**15)}
    )
    path.write_bytes(b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64)
    calls = _counted(monkeypatch, model)
    assert np.array_equal(features.image_features(model, preprocess, images, cache=cache), first)
    assert calls == [2]


def test_a_cache_that_cannot_be_written_still_returns_features(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    images, texts = _images(2), ["a red circle", "a blue star"]
    expected = features.image_features(model, preprocess, images, progress=False)
    text = features.text_features(model, texts, progress=False)
    blocked = tmp_path / "a file"
    blocked.write_text("not a directory")
    with pytest.warns(UserWarning, match=f"not cached: cannot write {blocked}"):
        got = features.image_features(model, preprocess, images, cache=blocked, progress=False)
    assert np.array_equal(got, expected)
    with pytest.warns(UserWarning, match=f"not cached: cannot write {blocked}"):
        assert np.array_equal(features.text_features(model, texts, cache=blocked), text)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = tmp_path / "full"
    monkeypatch.setattr(np, "save", full)
    with pytest.warns(UserWarning, match=f"cannot write {cache}.*No space left on device"):
        got = features.image_features(model, preprocess, images, cache=cache, progress=False)
    assert np.array_equal(got, expected) and list(cache.iterdir()) == []  # no temporary file


def test_a_read_only_cache_still_returns_features(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    cache, images = tmp_path / "cache", _images(2)
    cache.mkdir()
    expected = features.image_features(model, preprocess, images, progress=False)

    def refused(*args, **kwargs):  # what a read-only folder gives (root would write anyway)
        raise PermissionError(errno.EACCES, "Permission denied", str(cache))

    monkeypatch.setattr(features.tempfile, "mkstemp", refused)
    with pytest.warns(UserWarning, match=f"cannot write {cache}.*Permission denied"):
        got = features.image_features(model, preprocess, images, cache=cache, progress=False)
    assert np.array_equal(got, expected) and list(cache.iterdir()) == []


def test_non_finite_features_are_not_cached(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    cache, images = tmp_path / "cache", _images(2)
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: original(x) * float("nan"))
    with pytest.warns(UserWarning, match="NaN or inf values; not cached"):
        got = features.image_features(model, preprocess, images, cache=cache, progress=False)
    assert np.isnan(got).all() and not cache.exists()
