"""Hostile and damaged inputs (#16): crafted MindSpore .ckpt files, `convert` over existing files
or a full disk, state dicts of impossible shapes or NaN weights, bad `predict` arguments."""

import json
import os
import re
import warnings

import numpy as np
import pytest
from helpers import FIXTURES, run_isolated
from mindspore.train.checkpoint_pb2 import Checkpoint
from PIL import Image

from clip.__main__ import main
from clip.checkpoints import CheckpointError, read_checkpoint, read_state_dict, write_ckpt
from clip.checkpoints.mindspore_ckpt import read_ckpt
from clip.config import CLIPConfig, model_config
from clip.model import CLIP, build_model

CHECKPOINTS = FIXTURES / "checkpoints"
CANONICAL = dict(np.load(CHECKPOINTS / "canonical.npz"))
RESNET = dict(np.load(FIXTURES / "tiny_resnet_weights.npz"))
GOOD = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(7)}


def ckpt_bytes(*values: tuple[str, list[int], str, bytes]) -> bytes:
    """A .ckpt of the given (tag, dims, tensor_type, tensor_content) values, whatever they say."""
    checkpoint = Checkpoint()
    for tag, dims, kind, content in values:
        value = checkpoint.value.add()
        value.tag = tag
        value.tensor.dims.extend(dims)
        value.tensor.tensor_type, value.tensor.tensor_content = kind, content
    return checkpoint.SerializeToString()


# (dims, tensor_type, content) of the tensor "w", and the problem the error names
HOSTILE = {
    "more data": (([2, 2], "Float32", bytes(20)), r"declares shape \(2, 2\) .*but holds 20 bytes"),
    "less data": (([2, 2], "Float32", bytes(8)), r"of Float32 \(16 bytes\) but holds 8 bytes"),
    "negative dim": (([-1, 4], "Float32", bytes(16)), r"has dims \[-1, 4\]"),
    "zero dim": (([3, 0], "Float32", b""), r"has dims \[3, 0\]"),
    "empty tensor": (([0], "Float32", b""), r"has dims \[0\]"),
    "unknown dtype": (([2], "Float8", bytes(2)), "has dtype 'Float8', which is not one of"),
    "no dtype": (([2], "", bytes(8)), "has dtype '', which is not one of"),
    "huge dims": (([1 << 31, 1 << 31], "Float32", bytes(16)), "more than the whole file"),
    "too many dims": (([1] * 40, "Float32", bytes(4)), "has 40 dims, more than numpy's 32"),
}


def hostile_file(tmp_path, kind: str):
    path = tmp_path / f"{kind.replace(' ', '_')}.ckpt"
    path.write_bytes(ckpt_bytes(("ok", [1], "Float32", bytes(4)), ("w", *HOSTILE[kind][0])))
    return path


@pytest.mark.parametrize("kind", HOSTILE)
def test_crafted_ckpt_is_one_clear_error(tmp_path, kind):
    path = hostile_file(tmp_path, kind)
    with pytest.raises(CheckpointError, match=f"^{path}: w .*{HOSTILE[kind][1]}"):
        read_state_dict(path)


def test_crafted_ckpts_neither_crash_nor_allocate_and_good_files_still_load(tmp_path):
    """In one capped process, the loader MindSpore's would crash on: each hostile file refused,
    then a good file read to its exact numbers."""
    write_ckpt(GOOD, tmp_path / "good.ckpt", config="{}")
    paths = [str(hostile_file(tmp_path, kind)) for kind in HOSTILE]
    code = f"""if True:
        import json, numpy as np
        from clip.checkpoints import CheckpointError
        from clip.checkpoints.mindspore_ckpt import read_ckpt
        out = []
        for path in {paths!r}:
            try:
                read_ckpt(path)
                out.append("read")
            except CheckpointError as err:
                out.append(str(err))
            good = read_ckpt({str(tmp_path / "good.ckpt")!r})
            assert np.array_equal(good["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
            assert good["step"] == 7 and good["clip_config"] == "{{}}", good
        print(json.dumps(out))
    """
    done = run_isolated(code, memory_mib=2048)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.splitlines()[-1])
    for path, (kind, (_, problem)), error in zip(paths, HOSTILE.items(), errors, strict=True):
        assert error.startswith(f"{path}: w "), (kind, error)
        assert re.search(problem, error), (kind, error)


def test_damaged_ckpt_framing(tmp_path):
    whole = ckpt_bytes(("w", [2, 3], "Float32", GOOD["w"].tobytes()))
    mapped = Checkpoint()
    mapped.value.add(tag="m").maptensor.tensor.add(
        dims=[1], tensor_type="Int8", tensor_content=b"\0"
    )
    cases = {
        "cut.ckpt": (whole[:-5], "truncated MindSpore .ckpt"),
        "garbage.ckpt": (whole + b"\x12\x00", "corrupt, encrypted or not a MindSpore .ckpt"),
        "bad_tag.ckpt": (b"\n\x06\n\x02\xff\xfe\x12\x00", "corrupt MindSpore .ckpt value"),
        "map.ckpt": (whole + mapped.SerializeToString(), r"holds m \(a map\), which is not a"),
        "twice.ckpt": (whole + ckpt_bytes(("x", [1], "Int8", b"\0")) + whole, "holds w twice"),
        "split.ckpt": (
            ckpt_bytes(("w", [2], "Float32", bytes(4)), ("w", [3], "Float32", bytes(4))),
            "split over values of different shapes",
        ),
        "string.ckpt": (ckpt_bytes(("clip_config", [0], "str", b"abc")), "corrupt string"),
    }
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"^{tmp_path / name}: .*{problem}"):
            read_checkpoint(tmp_path / name)


def test_ckpt_reader_keeps_mindspores_own_encodings(tmp_path):
    """save_checkpoint's CRC trailer, strings and scalars; a tensor split over several values, as
    save_checkpoint writes those over 512 MiB."""
    import mindspore

    big = np.random.default_rng(0).standard_normal((70, 30)).astype(np.float32)
    params = [{"name": "big", "data": mindspore.Tensor(big)}]
    params.append({"name": "scalar", "data": mindspore.Tensor(np.float32(2.5))})
    mindspore.save_checkpoint(params, str(tmp_path / "m.ckpt"), crc_check=True,
                              append_dict={"clip_config": "ü {}", "other": "x"})  # fmt: skip
    assert (tmp_path / "m.ckpt").read_bytes()[-17:-10] == b"crc_num"
    arrays = read_ckpt(tmp_path / "m.ckpt")
    assert sorted(arrays) == ["big", "clip_config", "scalar"] and arrays["clip_config"] == "ü {}"
    assert np.array_equal(arrays["big"], big) and arrays["big"].flags.writeable
    assert arrays["scalar"].shape == () and arrays["scalar"] == 2.5
    content = big.tobytes()
    parts = [("big", [70, 30], "Float32", content[i : i + 3000]) for i in range(0, 8400, 3000)]
    (tmp_path / "split.ckpt").write_bytes(ckpt_bytes(*parts, ("after", [1], "Int8", b"\1")))
    arrays = read_ckpt(tmp_path / "split.ckpt")
    assert np.array_equal(arrays["big"], big) and arrays["after"].tolist() == [1]


# -- convert: never over the source, over a file only with --force, nothing left on failure --------


def test_convert_refuses_an_existing_destination_unless_forced(tmp_path, capsys):
    src, dst = CHECKPOINTS / "legacy.pt", tmp_path / "out.ckpt"
    dst.write_bytes(b"precious")
    assert main(["convert", str(src), str(dst)]) == 1
    assert capsys.readouterr().err == f"error: {dst}: exists; pass --force to replace it, or " \
        "choose another path\n"  # fmt: skip
    assert dst.read_bytes() == b"precious"
    assert main(["convert", str(src), str(dst), "--force"]) == 0
    assert sorted(read_checkpoint(dst).state_dict) == sorted(CANONICAL)
    assert sorted(os.listdir(tmp_path)) == ["out.ckpt"]  # no partial files beside it


@pytest.mark.parametrize("link", ["same path", "symlink", "hard link", "folder's weights"])
def test_convert_never_writes_over_its_source(tmp_path, capsys, link):
    src = tmp_path / "model.safetensors"
    src.write_bytes((CHECKPOINTS / "model.safetensors").read_bytes())
    source, dst = src, tmp_path / "dst.safetensors"
    if link == "same path":
        dst = src
    elif link == "symlink":
        dst.symlink_to(src)
    elif link == "hard link":
        os.link(src, dst)
    else:  # the folder is the source, its weights file the destination
        (tmp_path / "config.json").write_text("{}")
        source, dst = tmp_path, src
    before = src.read_bytes()
    assert main(["convert", str(source), str(dst), "--force"]) == 1
    assert capsys.readouterr().err == f"error: {dst}: is the source itself; write the .ckpt to " \
        "another path\n"  # fmt: skip
    assert src.read_bytes() == before


def test_convert_on_a_full_disk_leaves_nothing_behind(tmp_path):
    """A file-size limit makes every write past 64 KiB fail as a full disk does (EFBIG)."""
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes((CHECKPOINTS / "model.safetensors").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    code = f"""if True:
        import resource, signal, sys
        from clip.__main__ import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        sys.exit(main(["convert", {str(src)!r}, {str(out / "model.ckpt")!r}]))
    """
    assert (CHECKPOINTS / "model.safetensors").stat().st_size > 1 << 17  # the limit is hit
    done = run_isolated(code)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith("error: ")
    assert os.listdir(out) == []


# -- model_config: shapes checked, each error names the key and the shape expected -----------------


@pytest.mark.parametrize(
    "base, change, problem",
    [
        ("vit", {"text_projection": np.zeros(32)}, r"text_projection has shape \(32,\), expected "
         r"\(width, embed dim\)"),
        ("vit", {"positional_embedding": np.zeros((0, 64))}, r"positional_embedding has shape "
         r"\(0, 64\), expected \(context length, width\)"),
        ("vit", {"visual.positional_embedding": np.zeros((0, 64))}, r"visual.positional_embedding"
         r" has shape \(0, 64\)"),
        ("vit", {"visual.positional_embedding": np.zeros((11, 64))}, r"visual.positional_embedding"
         r" has 11 rows, expected grid \* grid \+ 1"),
        ("vit", {"visual.conv1.weight": np.zeros((64, 3))}, r"visual.conv1.weight has shape "
         r"\(64, 3\), expected \(width, 3, patch, patch\)"),
        ("vit", {"ln_final.weight": np.zeros(())}, r"ln_final.weight has shape \(\), expected"),
        ("vit", {"transformer.resblocks.0.mlp.c_fc.weight": np.zeros(5)}, r"c_fc.weight has "
         r"shape \(5,\), expected \(mlp width, width\)"),
        ("resnet", {"visual.layer1.0.conv1.weight": None}, "missing visual.layer1.0.conv1.weight"),
        ("resnet", {"visual.layer2.*": None}, "no blocks in visual.layer2"),
        ("resnet", {"visual.conv1.weight": np.zeros((4, 3))}, r"visual.conv1.weight has shape "
         r"\(4, 3\), expected \(width / 2, 3, 3, 3\)"),
    ],
)  # fmt: skip
def test_model_config_checks_the_shapes_it_reads(base, change, problem):
    state = dict(CANONICAL if base == "vit" else RESNET)
    for key, value in change.items():
        for name in [k for k in state if k == key or k.startswith(key.rstrip("*"))]:
            del state[name]
        if value is not None:
            state[key] = value
    with pytest.raises(ValueError, match=problem):
        model_config(state)


def test_config_sizes_must_be_positive_ints():
    good = model_config(CANONICAL)
    for field, value in [("context_length", 0), ("embed_dim", -1), ("vision_layers", 1.5),
                         ("vocab_size", True), ("vision_patch_size", None)]:  # fmt: skip
        with pytest.raises(ValueError, match=f"{field} must be an int >= 1"):
            CLIPConfig(**{**good.__dict__, field: value})
    with pytest.raises(ValueError, match="vision_layers.2. must be an int >= 1, got 0"):
        model_config(RESNET).__class__(**{**model_config(RESNET).__dict__, "vision_layers":
                                          (1, 1, 0, 1)})  # fmt: skip


# -- NaN / Inf weights are flagged --------------------------------------------------------------


def test_nan_weights_warn_in_build_model_and_show_in_info(tmp_path, capsys):
    state = {k: v.astype(np.float32) for k, v in CANONICAL.items()}
    state["ln_final.weight"][0] = np.nan
    state["visual.proj"][1, 1] = np.inf
    with pytest.warns(UserWarning, match=r"^2 tensors hold NaN or Inf values \((visual.proj|"
                      r"ln_final.weight), (visual.proj|ln_final.weight)\)"):  # fmt: skip
        build_model(dict(state))
    write_ckpt(state, tmp_path / "nan.ckpt")
    assert main(["info", str(tmp_path / "nan.ckpt")]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("warning: 2 tensors hold NaN or Inf values: ") and "visual.proj" in last
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite weights: no warning
        build_model(dict(CANONICAL))


# -- predict: the model's context length, one-line errors --------------------------------------


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """A tiny random CLIP with OpenAI's vocabulary and context length 8, and an image."""
    config = CLIPConfig(16, 32, 1, 64, 16, 8, 49408, 64, 1)
    root = tmp_path_factory.mktemp("short")
    weights = {name: p.asnumpy() for name, p in CLIP(config).parameters_and_names()}
    write_ckpt(weights, root / "short.ckpt", config=config.to_json())
    Image.new("RGB", (40, 40), "red").save(root / "red.png")
    return root / "short.ckpt", root / "red.png"


def test_predict_tokenizes_at_the_models_context_length(short_context, capsys):
    model, image = short_context
    assert main(["predict", str(image), "--labels", "red,blue", "--model", str(model)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    args = ["predict", str(image), "--labels", "red,a very big blue box", "--model", str(model)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == (f'error: the prompt "a photo of a a very big blue box." is too long for context '
                   f"length 8 of model {model}; shorten its label or --template\n")  # fmt: skip


@pytest.mark.parametrize("template", ["a {} {0}", "{x}", "{} and {}", "a {{}}", "a {", "{:>99}"])
def test_predict_template_with_other_braces_is_one_line(short_context, capsys, template):
    _, image = short_context
    assert main(["predict", str(image), "--labels", "a,b", "--template", template]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --template must contain {} where a label goes, exactly once")
    assert err.count("\n") == 1


def test_predict_on_a_decompression_bomb_is_one_line(short_context, capsys, monkeypatch):
    _, image = short_context  # 1600 pixels: a bomb when the limit is 700 (twice it is exceeded)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)
    assert main(["predict", str(image), "--labels", "a,b"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {image}: Image size (1600 pixels) exceeds")
    assert err.count("\n") == 1


def test_one_byte_file_is_not_a_traceback(tmp_path):
    (tmp_path / "one.pt").write_bytes(b"\x80")
    with pytest.raises(CheckpointError, match=r"one.pt: is only 1 bytes, too short"):
        read_checkpoint(tmp_path / "one.pt")
