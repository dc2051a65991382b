"""OpenAI's published model names, and their download into a verified cache."""

import hashlib
import http.client
import os
import secrets
import time
import urllib.request
import warnings
from pathlib import Path

from tqdm import tqdm

_BASE = "https://openaipublic.azureedge.net/clip/models"

_FILES = {  # name: (SHA-256, file name)
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": (
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        "ViT-L-14-336px.pt",
    ),
}
# OpenAI's files run from about 250 MB (RN50) to 1.3 GB (RN50x64); a body beyond this limit is not
# a model (their exact sizes are not recorded here: the server's Content-Length is also enforced).
MAX_DOWNLOAD_BYTES = 3 << 30
DOWNLOAD_TIMEOUT = 6 * 3600.0  # seconds for a whole download: 1.3 GB at 64 kB/s
READ_TIMEOUT = 60.0  # seconds a single read may wait
STALE_PART_SECONDS = 24 * 3600.0
MODELS = {name: f"{_BASE}/{sha}/{file}" for name, (sha, file) in _FILES.items()}
# Models shipped inside the package: the demo CLIP trained by workbench/demo/train.py.
SHIPPED = {"demo": Path(__file__).resolve().parent / "weights" / "demo.ckpt"}


def available_models() -> list[str]:
    """Names of OpenAI's published CLIP models."""
    return list(MODELS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_stale_parts(root: Path) -> None:
    """Delete the .part files of downloads killed over a day ago (beyond the default deadline)."""
    for part in root.glob(".*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:
            pass  # removed meanwhile, or not ours to remove: it does no harm


def download(
    name: str,
    root: str | os.PathLike | None = None,
    url: str | None = None,
    *,
    timeout: float = DOWNLOAD_TIMEOUT,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Local path of a published model's file in `root` (default ~/.cache/clip), SHA-256 verified.

    A cached file with the right hash is used as is; otherwise the file is downloaded (from `url`,
    by default MODELS[name], whose second-to-last part is the SHA-256) to a temporary file in
    `root`, verified, and renamed into place, so the cache never holds a partial or wrong file.
    The download is abandoned after `timeout` seconds in all (each read also times out after
    READ_TIMEOUT s) or beyond `max_bytes` (or the announced Content-Length), with a RuntimeError.
    """
    if url is None:
        if name not in MODELS:
            raise RuntimeError(f"Model {name} not found; available models = {available_models()}")
        url = MODELS[name]
    root = Path(root if root is not None else "~/.cache/clip").expanduser()
    target = root / url.rsplit("/", 1)[-1]
    expected = url.split("/")[-2]
    if target.exists() and not target.is_file():
        raise RuntimeError(f"{target} exists and is not a regular file")
    if target.is_file():
        if _sha256(target) == expected:
            return target
        warnings.warn(f"{target} has the wrong SHA-256; downloading it again", stacklevel=2)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(root)
    partial = root / f".{target.name}.{secrets.token_hex(4)}.part"
    deadline, received, size = time.monotonic() + timeout, 0, None

    def failed(problem: str, remedy: str = "Try again") -> RuntimeError:
        return RuntimeError(
            f"Cannot download {name} ({problem}); nothing was kept. {remedy}. Fetch {url} by hand "
            f"and put it at {target}"
        )

    try:
        digest = hashlib.sha256()
        # the socket timeout bounds each read; the deadline, checked between reads, the whole
        with urllib.request.urlopen(url, timeout=min(READ_TIMEOUT, timeout)) as source:
            size = int(source.headers.get("Content-Length") or 0) or None
            if size is not None and size > max_bytes:
                raise failed(
                    f"{size} bytes announced, over max_bytes={max_bytes}",
                    "Pass a larger max_bytes if it is right",
                )
            with (
                open(partial, "xb") as out,
                tqdm(total=size, desc=name, unit="iB", unit_scale=True, unit_divisor=1024) as bar,
            ):
                while chunk := source.read1(1 << 20):  # what has arrived, not a full megabyte
                    received += len(chunk)
                    if received > max_bytes:
                        raise failed(
                            f"more than max_bytes={max_bytes} bytes sent",
                            "Pass a larger max_bytes if it is right",
                        )
                    if time.monotonic() > deadline:
                        raise failed(
                            f"not complete after the {timeout:g} s timeout: {received} of "
                            f"{size or 'unknown'} bytes arrived",
                            "Pass a longer timeout",
                        )
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if size is not None and received != size:
            raise failed(f"the connection closed after {received} of {size} bytes")
        if digest.hexdigest() != expected:
            raise RuntimeError(
                f"{url} was downloaded but its SHA-256 is {digest.hexdigest()}, not {expected}; "
                f"nothing was kept. Try again, or fetch it by hand and put it at {target}"
            )
        os.replace(partial, target)
    except http.client.HTTPException as err:  # a truncated chunked body, a malformed response
        raise failed(f"broken response after {received} bytes: {err!r}") from err
    except OSError as err:  # offline, refused, timed out, HTTP error (URLError is an OSError)
        reason = getattr(err, "reason", None) or err.strerror or err
        raise failed(
            f"{reason}; {received} bytes had arrived" if received else str(reason)
        ) from err
    finally:
        partial.unlink(missing_ok=True)
    return target
