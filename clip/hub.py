"""OpenAI's published model names, and their download into a verified cache."""

import hashlib
import os
import secrets
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


def download(name: str, root: str | os.PathLike | None = None, url: str | None = None) -> Path:
    """Local path of a published model's file in `root` (default ~/.cache/clip), SHA-256 verified.

    A cached file with the right hash is used as is; otherwise the file is downloaded (from `url`,
    by default MODELS[name], whose second-to-last part is the SHA-256) to a temporary file in
    `root`, verified, and renamed into place, so the cache never holds a partial or wrong file.
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
    partial = root / f".{target.name}.{secrets.token_hex(4)}.part"
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as source, open(partial, "xb") as out:
            size = int(source.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, desc=name, unit="iB", unit_scale=True, unit_divisor=1024) as bar:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected:
            raise RuntimeError(
                f"{url} was downloaded but its SHA-256 is {digest.hexdigest()}, not {expected}; "
                "nothing was kept, try again"
            )
        os.replace(partial, target)
    except OSError as err:  # offline, refused, timed out, HTTP error (URLError is an OSError)
        reason = getattr(err, "reason", None) or err.strerror or err
        raise RuntimeError(
            f"Cannot download {name} ({reason}). Fetch {url} by hand and put it at {target}"
        ) from err
    finally:
        partial.unlink(missing_ok=True)
    return target
