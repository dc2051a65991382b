"""Checkpoint readers: every format reads to OpenAI's names and values exactly, loads to OpenAI's
outputs, and damaged or hostile files fail with one clear error and run nothing."""

import dataclasses
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import mindspore
import numpy as np
import pytest
import safetensors.numpy
from helpers import FIXTURES, relative_error, softmax
from mindspore import Tensor

import clip
from clip.checkpoints import CheckpointError, read_checkpoint, read_state_dict, write_ckpt
from clip.checkpoints.torch_formats import read_torch_zip
from clip.config import AssumedConfigWarning, model_config
from clip.model import build_model

CHECKPOINTS = FIXTURES / "checkpoints"
CANONICAL = dict(np.load(CHECKPOINTS / "canonical.npz"))
IO = dict(np.load(CHECKPOINTS / "io.npz"))
SUBSET = ["ln_final.weight", "ln_final.bias", "text_projection", "visual.proj", "logit_scale"]


def mindcv_names(state: dict) -> dict:
    """OpenAI names -> mindcv examples/clip names, by the rules of its ckpt_transform.py."""
    out = {}
    for name, value in state.items():
        if "ln_" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        elif name == "token_embedding.weight":
            name = "token_embedding.embedding_table"
        elif ".bn" in name or ".downsample.1." in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
            name = name.replace(".running_mean", ".moving_mean")
            name = name.replace(".running_var", ".moving_variance")
        out[name] = value
    return out


def save_ms(state: dict, path: Path) -> Path:
    """MindSpore's own save_checkpoint, names as given."""
    mindspore.save_checkpoint([{"name": k, "data": Tensor(v)} for k, v in state.items()], str(path))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """The .ckpt files (MindSpore is not in the fixture generator's environment): canonical names
    by write_ckpt, and mindcv names with the extras a mindcv ckpt holds (sizes, causal masks)."""
    root = tmp_path_factory.mktemp("ckpts")
    write_ckpt(CANONICAL, root / "canonical.ckpt")
    extras = {"input_resolution": np.array(24), "vocab_size": np.array(64)}
    extras["transformer.resblocks.0.attn_mask"] = np.triu(np.full((32, 32), -np.inf, np.float32), 1)
    save_ms({**mindcv_names(CANONICAL), **extras}, root / "mindcv_vit.ckpt")
    resnet = dict(np.load(FIXTURES / "tiny_resnet_weights.npz"))
    save_ms(mindcv_names(resnet), root / "mindcv_resnet.ckpt")
    return {p.name: p for p in root.iterdir()}


def assert_exact(state: dict, names) -> None:
    """The state dict holds exactly `names`, each equal to canonical.npz after upcasting."""
    assert sorted(state) == sorted(names)
    for name in names:
        assert state[name].shape == CANONICAL[name].shape, name
        assert np.array_equal(state[name].astype(np.float64), CANONICAL[name]), name


WHOLE = {  # file: (format, naming, stored dtype)
    "openai_jit.pt": ("torchscript", "OpenAI", "float16"),
    "state_dict.pt": ("torch-zip", "OpenAI", "float16"),
    "legacy.pt": ("torch-legacy", "OpenAI", "float16"),
    "model.safetensors": ("safetensors", "OpenAI", "float16"),
    "hf_model.safetensors": ("safetensors", "Hugging Face", "float16"),
    "canonical.npz": ("npz", "OpenAI", "float16"),
}


@pytest.mark.parametrize("name", WHOLE)
def test_whole_model_reads_exactly(name):
    checkpoint = read_checkpoint(CHECKPOINTS / name)
    assert (checkpoint.format, checkpoint.naming) == WHOLE[name][:2]
    assert checkpoint.dtypes == {WHOLE[name][2]: len(CANONICAL)}
    assert all(a.dtype == np.float16 for a in checkpoint.state_dict.values())
    assert_exact(checkpoint.state_dict, CANONICAL)


@pytest.mark.parametrize("name", ["canonical.ckpt", "mindcv_vit.ckpt"])
def test_ckpt_reads_exactly(ckpts, name):
    checkpoint = read_checkpoint(ckpts[name])
    assert checkpoint.format == "mindspore-ckpt"
    assert checkpoint.naming == ("mindcv" if "mindcv" in name else "OpenAI")
    assert_exact(checkpoint.state_dict, CANONICAL)


PARTS = {  # file: (naming, stored dtypes, names)
    "nested_module.pt": ("OpenAI", {"float32": 5}, SUBSET),
    "bf16.pt": ("OpenAI", {"bfloat16": 5}, SUBSET),
    "bf16.safetensors": ("OpenAI", {"bfloat16": 5}, SUBSET),
    "views.pt": (
        "OpenAI",
        {"float16": 4},
        ["visual.proj", "ln_final.weight", "ln_final.bias"]
        + ["transformer.resblocks.0.attn.in_proj_weight"],
    ),
    "big_endian.pt": (
        "OpenAI",
        {"float32": 2, "float16": 1},
        ["ln_final.weight", "visual.proj", "text_projection"],
    ),
    "hf_pytorch_model.bin": (
        "Hugging Face",
        {"float16": 6},
        ["transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.attn.in_proj_bias"]
        + ["transformer.resblocks.0.attn.out_proj.weight"]
        + ["transformer.resblocks.0.attn.out_proj.bias", "text_projection", "logit_scale"],
    ),
}


@pytest.mark.parametrize("name", PARTS)
def test_variants_read_exactly(name):
    """Training-checkpoint nesting and `module.`, old logit_scale [1], bfloat16 (widened to float32
    exactly), strided/offset/shared storages, a big-endian record, HF's split q/k/v."""
    checkpoint = read_checkpoint(CHECKPOINTS / name)
    naming, dtypes, names = PARTS[name]
    assert checkpoint.naming == naming and checkpoint.dtypes == dtypes
    assert_exact(checkpoint.state_dict, names)
    if "bf16" in name:
        assert all(a.dtype == np.float32 for a in checkpoint.state_dict.values())


def test_torchscript_sizes_are_in_the_archive_and_dropped():
    raw = read_torch_zip(CHECKPOINTS / "openai_jit.pt")
    assert {k: int(raw[k]) for k in ("input_resolution", "context_length", "vocab_size")} == {
        "input_resolution": 24,
        "context_length": 32,
        "vocab_size": 64,
    }
    assert "input_resolution" not in read_state_dict(CHECKPOINTS / "openai_jit.pt")


def test_ckpt_in_bfloat16_and_under_another_suffix(tmp_path):
    params = [
        {"name": k, "data": Tensor(CANONICAL[k].astype(np.float32)).astype(mindspore.bfloat16)}
        for k in SUBSET
    ]
    mindspore.save_checkpoint(params, str(tmp_path / "bf16.ckpt"))
    (tmp_path / "bf16.ckpt").rename(tmp_path / "weights.bin")
    checkpoint = read_checkpoint(tmp_path / "weights.bin")
    assert checkpoint.format == "mindspore-ckpt" and checkpoint.dtypes == {"bfloat16": 5}
    assert_exact(checkpoint.state_dict, SUBSET)


@pytest.mark.parametrize("fp16", [False, True])
def test_write_ckpt_round_trip(tmp_path, fp16):
    state = {k: v.astype(np.float32) for k, v in CANONICAL.items()}
    write_ckpt(state, tmp_path / "model.weights", fp16=fp16)
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights"]  # no leftover partial file
    checkpoint = read_checkpoint(tmp_path / "model.weights")
    assert checkpoint.dtypes == {"float16" if fp16 else "float32": len(CANONICAL)}
    assert_exact(checkpoint.state_dict, CANONICAL)


def assert_outputs(model, io) -> None:
    """DESIGN.md's tolerances against OpenAI's outputs."""
    images, tokens = Tensor(io["images"]), Tensor(io["tokens"])
    assert relative_error(model.encode_image(images).asnumpy(), io["image_features"]) <= 1e-4
    assert relative_error(model.encode_text(tokens).asnumpy(), io["text_features"]) <= 1e-4
    logits_per_image, _ = model(images, tokens)
    assert np.abs(softmax(logits_per_image.asnumpy()) - io["probs"]).max() <= 1e-5


@pytest.mark.parametrize("name", [*WHOLE, "canonical.ckpt", "mindcv_vit.ckpt"])
def test_each_format_loads_to_openais_outputs(ckpts, name):
    path = ckpts.get(name, CHECKPOINTS / name)
    if name == "openai_jit.pt":  # OpenAI's own format: its assumptions are the model's
        with warnings.catch_warnings():
            warnings.simplefilter("error", AssumedConfigWarning)
            model, preprocess = clip.load(path)
    else:  # no config: OpenAI's assumptions, said, with the override named
        with pytest.warns(AssumedConfigWarning, match=r"has no config.*pass config= to clip.load"):
            model, preprocess = clip.load(path)
    assert preprocess.n_px == 24
    assert_outputs(model, IO)


def test_a_ckpt_keeps_the_config_it_was_written_with(tmp_path):
    config = dataclasses.replace(model_config(CANONICAL), activation="gelu")
    write_ckpt(CANONICAL, tmp_path / "gelu.ckpt", config=config.to_json())
    assert read_checkpoint(tmp_path / "gelu.ckpt").config == config
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedConfigWarning)
        model, _ = clip.load(tmp_path / "gelu.ckpt")
    assert model.config == config
    images = Tensor(IO["images"])  # exact GELU: no longer OpenAI's numbers
    assert relative_error(model.encode_image(images).asnumpy(), IO["image_features"]) > 1e-3
    write_ckpt(CANONICAL, tmp_path / "bad.ckpt", config='{"embed_dim": 1}')
    with pytest.raises(CheckpointError, match="corrupt clip_config"):
        read_checkpoint(tmp_path / "bad.ckpt")


def test_mindcv_resnet_with_batchnorm_names_loads_to_openais_outputs(ckpts):
    checkpoint = read_checkpoint(ckpts["mindcv_resnet.ckpt"])
    expected = dict(np.load(FIXTURES / "tiny_resnet_weights.npz"))
    # torch's BatchNorm step counters are not weights: reading drops them
    expected = {k: v for k, v in expected.items() if not k.endswith(".num_batches_tracked")}
    assert checkpoint.naming == "mindcv" and sorted(checkpoint.state_dict) == sorted(expected)
    assert all(np.array_equal(checkpoint.state_dict[k], v) for k, v in expected.items())
    with pytest.warns(AssumedConfigWarning):  # an earlier port's file: no config
        model, _ = clip.load(ckpts["mindcv_resnet.ckpt"])
    assert_outputs(model, dict(np.load(FIXTURES / "tiny_resnet_io.npz")))


# -- damaged files: one CheckpointError naming the file and the problem ---------------------------


def rewrite_zip(source: Path, target: Path, change) -> Path:
    """Copy a zip archive, passing each entry's (name, bytes) through `change`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, change(info.filename, src.read(info)))
    return target


def halve_tensors(name: str, data: bytes) -> bytes:
    return data[: len(data) // 2] if "/data/" in name else data


def list_pickle(name: str, data: bytes) -> bytes:
    return pickle.dumps([1, 2], protocol=2) if name.endswith(".pkl") else data


def damaged(tmp_path: Path, kind: str) -> Path:
    """A file of the given kind of damage."""
    whole = (CHECKPOINTS / "state_dict.pt").read_bytes()
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated zip":
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "corrupt zip":
        data = bytearray(whole)
        data[len(data) // 2] ^= 0xFF  # inside a stored tensor: the CRC no longer matches
        path.write_bytes(bytes(data))
    elif kind == "short storage":
        rewrite_zip(CHECKPOINTS / "state_dict.pt", path, halve_tensors)
    elif kind == "truncated legacy":
        path.write_bytes((CHECKPOINTS / "legacy.pt").read_bytes()[:-1000])
    elif kind == "truncated safetensors":
        path.write_bytes((CHECKPOINTS / "model.safetensors").read_bytes()[:-1000])
    elif kind == "text":
        path.write_text("<html><body>404 Not Found</body></html>\n")
    elif kind == "lfs pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    elif kind == "empty":
        path.touch()
    elif kind == "unknown":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=2))
    elif kind == "list pickle":
        rewrite_zip(CHECKPOINTS / "state_dict.pt", path, list_pickle)
    elif kind == "HF without k_proj":
        hf = safetensors.numpy.load_file(CHECKPOINTS / "hf_model.safetensors")
        del hf["text_model.encoder.layers.0.self_attn.k_proj.weight"]
        safetensors.numpy.save_file(hf, path)
    return path


PROBLEMS = {
    "truncated zip": "truncated or corrupt zip archive",
    "corrupt zip": "CRC",
    "short storage": "past the end of its storage",
    "truncated legacy": "corrupt torch.save legacy pickle file",
    "truncated safetensors": "corrupt or truncated safetensors",
    "text": "is a text file",
    "lfs pointer": "Git LFS pointer",
    "empty": "is empty",
    "unknown": "unknown format",
    "plain pickle": "not a PyTorch checkpoint",
    "list pickle": "holds a list, not a state dict",
    "HF without k_proj": "transformer.resblocks.0.attn.in_proj_weight lacks its k_proj part",
}


@pytest.mark.parametrize("kind", PROBLEMS)
def test_damaged_file_gives_one_clear_error(tmp_path, kind):
    path = damaged(tmp_path, kind)
    with pytest.raises(CheckpointError, match=PROBLEMS[kind]) as caught:
        read_state_dict(path)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize("kind", ["truncated legacy", "truncated safetensors"])
def test_a_reader_error_keeps_its_cause(tmp_path, kind):
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(damaged(tmp_path, kind))
    assert caught.value.__cause__ is not None  # the reader's own error and traceback stay


def test_build_model_takes_any_naming_convention():
    hf = safetensors.numpy.load_file(CHECKPOINTS / "hf_model.safetensors")  # HF names, raw
    assert_outputs(build_model(hf), IO)


def test_directory_and_missing_file(tmp_path):
    (tmp_path / "model.safetensors").touch()
    with pytest.raises(CheckpointError, match="is a directory.*model.safetensors"):
        read_state_dict(tmp_path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_state_dict(tmp_path / "absent.pt")


def test_state_dict_of_another_model_lists_the_missing_clip_keys(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    safetensors.numpy.save_file({"fc.weight": np.zeros((10, 4), np.float32)}, path)
    with pytest.raises(ValueError, match=f"^{path}: .*missing .*text_projection.*visual.conv1"):
        clip.load(path)


def test_ckpt_whose_shapes_disagree_names_the_tensor(tmp_path):
    state = dict(CANONICAL, **{"visual.ln_post.bias": CANONICAL["visual.ln_post.bias"][:60]})
    write_ckpt(state, tmp_path / "bad.ckpt")
    with pytest.raises(
        ValueError, match=rf"^{tmp_path / 'bad.ckpt'}: .*visual.ln_post.bias has shape \(60,\)"
    ):
        clip.load(tmp_path / "bad.ckpt")


# -- hostile files: refused by name, nothing run --------------------------------------------------


class Payload:
    """Pickles as a call of `func(arg)`, as an attacker's file would."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def payloads(marker: Path) -> dict[str, Payload]:
    """Each creates `marker` when unpickled by the standard unpickler."""
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "eval": Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "exec": Payload(exec, f"import pathlib; pathlib.Path({str(marker)!r}).touch()"),
    }


def hostile(tmp_path: Path, container: str, payload: Payload) -> Path:
    """The payload in a torch.save zip's data.pkl, a TorchScript archive's, a bare pickle, or a
    pickle named .ckpt; wrapped like a training checkpoint."""
    data = pickle.dumps({"state_dict": {"visual.proj": payload}}, protocol=2)
    path = tmp_path / ("evil.ckpt" if container == "ckpt" else f"evil_{container}.pt")
    if container in ("zip", "torchscript"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", data)
            archive.writestr("archive/version", "3\n")
            if container == "torchscript":
                archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    else:
        path.write_bytes(data)
    return path


def test_payloads_are_live(tmp_path):
    """The hostile files below would run their code under the standard unpickler."""
    for name, payload in payloads(tmp_path / "marker").items():
        pickle.loads(pickle.dumps(payload, protocol=2))
        assert (tmp_path / "marker").exists(), name
        (tmp_path / "marker").unlink()


@pytest.mark.parametrize("container", ["zip", "torchscript", "pickle", "ckpt"])
@pytest.mark.parametrize("payload", ["os.system", "eval", "exec"])
def test_hostile_pickle_is_refused_naming_the_global(tmp_path, container, payload):
    marker = tmp_path / "marker"
    attack = payloads(marker)[payload]
    path = hostile(tmp_path, container, attack)
    module = {"builtins": "(__builtin__|builtins)"}.get(attack.func.__module__, "posix")
    qualname = f"{module}.{attack.func.__name__}"  # as the pickle spells it
    with pytest.raises(CheckpointError, match=f"^{path}: refused to load: .*asks for {qualname},"):
        read_state_dict(path)
    with pytest.raises(ValueError, match=qualname):
        clip.load(path)
    assert not marker.exists()


def test_torchscript_classes_are_inert_records(tmp_path):
    """In a TorchScript archive `__torch__.*` names become data; even one spelled like a call."""
    marker = tmp_path / "marker"
    data = b"\x80\x02c__torch__.os\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
    data += f"touch {marker}".encode() + b"\x85R."  # __torch__.os.system("touch ...")
    path = tmp_path / "scripted.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_state_dict(path)
    assert not marker.exists()
    with zipfile.ZipFile(tmp_path / "plain.pt", "w") as archive:  # outside TorchScript: refused
        archive.writestr("archive/data.pkl", data)
    with pytest.raises(CheckpointError, match="asks for __torch__.os.system"):
        read_state_dict(tmp_path / "plain.pt")
