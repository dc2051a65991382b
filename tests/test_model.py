"""The MindSpore model against OpenAI's reference outputs, and its architecture inference."""

import dataclasses
import json
import math
import time

import mindspore as ms
import numpy as np
import pytest
from helpers import FIXTURES, openai_arguments, random_state_dict, relative_error, softmax
from mindspore import Tensor

import clip
import clip.model as clip_model
from clip.model import CLIP, ModifiedResNet, VisionTransformer, build_model, model_config

with open(FIXTURES / "published_shapes.json") as f:
    PUBLISHED = json.load(f)  # OpenAI's nine architectures: parameter shapes by name, "configs"
CONFIGS = PUBLISHED["configs"]  # CLIP's arguments for each, written by fixtures/gen_models.py


def test_parity_with_openai(tiny, attention):
    weights, io = tiny
    model = build_model(weights)
    image_features = model.encode_image(Tensor(io["images"])).asnumpy()
    text_features = model.encode_text(Tensor(io["tokens"])).asnumpy()
    logits_per_image, logits_per_text = model(Tensor(io["images"]), Tensor(io["tokens"]))
    assert relative_error(image_features, io["image_features"]) <= 1e-4
    assert relative_error(text_features, io["text_features"]) <= 1e-4
    assert np.abs(softmax(logits_per_image.asnumpy()) - io["probs"]).max() <= 1e-5
    assert np.abs(logits_per_image.asnumpy() - io["logits_per_image"]).max() <= 1e-3
    np.testing.assert_array_equal(logits_per_text.asnumpy(), logits_per_image.asnumpy().T)


def test_normalised_features_and_logits_are_openais(tiny):
    weights, io = tiny
    model = build_model(weights)
    image = model.encode_image(Tensor(io["images"]), normalize=True).asnumpy()
    text = model.encode_text(Tensor(io["tokens"]), normalize=True).asnumpy()
    unit = io["image_features"] / np.linalg.norm(io["image_features"], axis=-1, keepdims=True)
    assert relative_error(image, unit) <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1, atol=1e-6)
    # from OpenAI's own (unnormalised) features, the one logit formula gives OpenAI's logits
    logits = model.logits(Tensor(io["image_features"]), Tensor(io["text_features"])).asnumpy()
    assert np.abs(logits - io["logits_per_image"]).max() <= 1e-3


def test_vision_transformer_trace_is_the_encoder_with_its_internals(tiny):
    weights, io = tiny
    model = build_model(weights)
    if not isinstance(model.visual, VisionTransformer):
        assert isinstance(model.visual, ModifiedResNet) and model.config.resnet
        return
    images = Tensor(io["images"])
    features, inputs, probs = model.visual.trace(images)
    assert relative_error(features.asnumpy(), io["image_features"]) <= 1e-4
    layers, tokens = model.config.vision_layers, model.visual.positional_embedding.shape[0]
    assert len(inputs) == len(probs) == layers
    assert probs[0].shape == (len(io["images"]), model.config.vision_heads, tokens, tokens)
    np.testing.assert_allclose(probs[-1].asnumpy().sum(-1), 1, atol=1e-5)
    np.testing.assert_array_equal(inputs[0].asnumpy(), model.visual.embed(images).asnumpy())


@pytest.mark.parametrize("jit", [False, True], ids=["op by op", "jit"])
def test_attention_pool_is_multi_head_attention_of_the_mean_token(jit):
    # float64 numpy with every token's keys and values formed, as torch's multi_head_attention
    n, c, heads, grid, out_dim = 3, 64, 4, 3, 24
    pool = clip_model.AttentionPool2d(grid, c, heads, out_dim)
    rng = np.random.default_rng(5)
    weights = {}
    for name, param in pool.parameters_and_names():
        weights[name] = rng.standard_normal(param.shape) * 0.3  # biases too, k's included
        param.set_data(Tensor(weights[name].astype(np.float32)))
    x = rng.standard_normal((n, c, grid, grid))
    tokens = x.reshape(n, c, -1).transpose(0, 2, 1)
    tokens = np.concatenate([tokens.mean(1, keepdims=True), tokens], 1)
    tokens = tokens + weights["positional_embedding"]

    def project(name, rows):
        return rows @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    d = c // heads
    q = project("q_proj", tokens[:, :1]).reshape(n, 1, heads, d).transpose(0, 2, 1, 3)
    k = project("k_proj", tokens).reshape(n, -1, heads, d).transpose(0, 2, 1, 3)
    v = project("v_proj", tokens).reshape(n, -1, heads, d).transpose(0, 2, 1, 3)
    probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d))  # (n, heads, 1, L)
    expected = project("c_proj", (probs @ v).transpose(0, 2, 1, 3).reshape(n, c))

    trace = ms.jit(pool.trace) if jit else pool.trace
    features, pool_probs = trace(Tensor(x.astype(np.float32)))
    assert relative_error(features.asnumpy(), expected) <= 1e-5
    assert pool_probs.shape == (n, heads, 1, grid * grid + 1)
    assert np.abs(pool_probs.asnumpy() - probs).max() <= 1e-6


@pytest.mark.parametrize("jit", [False, True], ids=["op by op", "jit"])
@pytest.mark.parametrize("export", [False, True], ids=["erf", "export's erf"])
def test_gelu_is_the_exact_erf_gelu(jit, export, monkeypatch):
    monkeypatch.setattr(clip_model, "EXPORT", export)
    x = np.concatenate([np.linspace(-12, 12, 4801), [-1e4, -40.0, 0.0, 1e-6, 40.0, 1e4]])
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    gelu = clip_model.GELU().construct
    out = (ms.jit(gelu) if jit else gelu)(Tensor(x.astype(np.float32))).asnumpy()
    assert np.allclose(out, exact, rtol=1e-6, atol=1e-6)


def test_config_heads_follow_widths_and_the_config_is_frozen():
    vit = model_config(random_state_dict(PUBLISHED["ViT-L/14"]))
    assert (vit.vision_heads, vit.transformer_heads) == (16, 12)  # OpenAI's width // 64
    resnet = model_config(random_state_dict(PUBLISHED["RN50"]))
    assert resnet.resnet and resnet.vision_heads == 32  # the attention pool: 64 * 32 // 64
    assert dataclasses.replace(vit, vision_head_width=128).vision_heads == 8
    assert dataclasses.replace(vit, vision_head_width=80).vision_heads == 12  # floor, as OpenAI's
    with pytest.raises(ValueError, match="text width 768 with head width 1024 gives no attention"):
        dataclasses.replace(vit, transformer_head_width=1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        vit.vision_width = 1


def test_jit_gives_the_same_numbers(tiny, attention):
    weights, io = tiny
    model = build_model(weights)
    eager = model(Tensor(io["images"]), Tensor(io["tokens"]))[0].asnumpy()
    model.compile_encoders()
    compiled = model(Tensor(io["images"]), Tensor(io["tokens"]))[0].asnumpy()
    assert np.abs(compiled - eager).max() <= 1e-4
    assert np.abs(softmax(compiled) - io["probs"]).max() <= 1e-5


def test_jit_takes_images_graph_batch_at_a_time(tiny, monkeypatch):
    weights, io = tiny
    model = build_model(weights)
    model.compile_encoders()
    encode, sizes = model._image_graph, []

    def recorded(images):
        sizes.append(images.shape[0])
        return encode(images)

    monkeypatch.setattr(model, "_image_graph", recorded)
    monkeypatch.setattr(model.visual, "graph_batch", 2)
    features = model.encode_image(Tensor(io["images"])).asnumpy()
    assert len(io["images"]) == 3 and sizes == [2, 2]  # the last chunk padded: one graph
    assert relative_error(features, io["image_features"]) <= 1e-4
    one = model.encode_image(Tensor(io["images"][:1])).asnumpy()
    assert sizes[2:] == [1]  # a batch below a chunk is not padded
    assert relative_error(one, io["image_features"][:1]) <= 1e-4


@pytest.mark.parametrize("jit", [False, True])
def test_text_runs_only_up_to_the_batchs_last_eot(tiny, jit, monkeypatch):
    weights, io = tiny
    model = build_model(weights)
    if jit:
        model.compile_encoders()
    name = "_text_graph" if jit else "encode_tokens"
    encode, lengths = getattr(model, name), []

    def recorded(tokens, eot):
        lengths.append(tokens.shape[1])
        return encode(tokens, eot)

    monkeypatch.setattr(model, name, recorded)
    short = io["tokens"].argmax(-1) < 50  # the texts that leave padding at the end
    features = model.encode_text(Tensor(io["tokens"][short])).asnumpy()
    last = int(io["tokens"][short].argmax(-1).max()) + 1
    assert lengths == [-(-last // 8) * 8 if jit else last]  # a graph per multiple of 8
    assert relative_error(features, io["text_features"][short]) <= 1e-4


def test_single_image_and_single_token_row(tiny):
    weights, io = tiny
    model = build_model(weights)
    batch = model.encode_image(io["images"]).asnumpy()
    one = model.encode_image(io["images"][1]).asnumpy()
    assert one.shape == (1, batch.shape[1])
    np.testing.assert_allclose(one[0], batch[1], rtol=1e-5, atol=1e-6)
    row = model.encode_text(Tensor(io["tokens"][2])).asnumpy()
    np.testing.assert_allclose(row[0], io["text_features"][2], rtol=1e-4, atol=1e-5)
    logits_per_image, _ = model(Tensor(io["images"][0]), Tensor(io["tokens"]))
    assert logits_per_image.shape == (1, len(io["tokens"]))


def test_model_attributes(tiny):
    weights, io = tiny
    model = build_model(weights)
    assert model.visual.input_resolution == io["images"].shape[-1] == 64
    assert model.context_length == 77
    assert model.vocab_size == weights["token_embedding.weight"].shape[0]
    assert model.dtype == ms.float32
    assert model.visual.conv1.weight.dtype == ms.float32
    assert model.logit_scale.asnumpy() == np.float32(weights["logit_scale"])


def test_the_nine_published_configurations_are_recorded():
    assert list(CONFIGS) == [n for n in PUBLISHED if n != "configs"] == clip.available_models()


@pytest.mark.parametrize("name", CONFIGS)
def test_architecture_inferred_for_published_models(name):
    config = model_config(random_state_dict(PUBLISHED[name]))
    assert openai_arguments(config) == CONFIGS[name]


@pytest.mark.parametrize("name", ["RN50", "RN50x4", "ViT-B/32", "ViT-B/16"])
def test_parameter_names_and_shapes_equal_openai(name):
    expected = {
        k: tuple(v)
        for k, v in PUBLISHED[name].items()
        if k not in ("input_resolution", "context_length", "vocab_size")
        and not k.endswith("num_batches_tracked")
    }
    model = CLIP(model_config(random_state_dict(PUBLISHED[name])))
    assert {k: tuple(p.shape) for k, p in model.parameters_and_names()} == expected


def test_full_size_rn50_runs_end_to_end():
    model = build_model(random_state_dict(PUBLISHED["RN50"], np.random.default_rng(0)))
    image = np.random.default_rng(1).standard_normal((2, 3, 224, 224), np.float32)
    tokens = np.zeros((3, 77), np.int32)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, [320, 1929, 2368], 49407
    logits_per_image, logits_per_text = model(image, Tensor(tokens))
    features = model.encode_image(image).asnumpy()
    assert features.shape == (2, 1024)
    assert logits_per_image.shape == (2, 3) and logits_per_text.shape == (3, 2)
    assert np.isfinite(features).all() and np.isfinite(logits_per_image.asnumpy()).all()


def test_logit_scale_of_shape_one_is_accepted(tiny):
    weights, io = tiny
    model = build_model({**weights, "logit_scale": weights["logit_scale"].reshape(1)})
    assert model.logit_scale.shape == ()
    assert (
        np.abs(softmax(model(io["images"], Tensor(io["tokens"]))[0].asnumpy()) - io["probs"]).max()
        <= 1e-5
    )


def test_not_a_clip_state_dict_names_the_missing_keys():
    with pytest.raises(ValueError, match="not a CLIP state dict: missing .*text_projection"):
        build_model({"fc.weight": np.zeros((2, 2), np.float32)})


def test_missing_unexpected_and_misshapen_keys_are_listed(tiny):
    weights, _ = tiny
    broken = dict(weights)
    del broken["ln_final.bias"]
    broken["extra.weight"] = np.zeros(3, np.float32)
    broken["transformer.resblocks.0.ln_1.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as error:
        build_model(broken)
    message = str(error.value)
    assert "missing 1 keys: ln_final.bias" in message
    assert "unexpected 1 keys: extra.weight" in message
    assert "transformer.resblocks.0.ln_1.bias has shape (5,), expected (" in message


@pytest.mark.parametrize(
    "image, problem",
    [
        (np.zeros((2, 3, 32, 32), np.float32), "shape \\(2, 3, 32, 32\\)"),
        (np.zeros((2, 64, 64, 3), np.float32), "shape \\(2, 64, 64, 3\\)"),
        (np.zeros((64, 64), np.float32), "shape \\(64, 64\\)"),
        (np.zeros((1, 3, 64, 64), np.uint8), "dtype uint8"),
    ],
)
def test_bad_images_get_clear_errors(tiny, image, problem):
    model = build_model(tiny[0])
    with pytest.raises(ValueError, match=problem):
        model.encode_image(image)


def test_image_of_wrong_type_gets_a_clear_error(tiny):
    with pytest.raises(TypeError, match="preprocess"):
        build_model(tiny[0]).encode_image([[0.0]])


@pytest.mark.parametrize(
    "tokens, problem",
    [
        (np.full((1, 77), 1000, np.int32), "outside this model's vocabulary"),
        (np.full((1, 77), -1, np.int32), "outside this model's vocabulary"),
        (np.ones((1, 78), np.int32), "context length is 77"),
        (np.ones((1, 77), np.float32), "integer token ids"),
        (np.ones((0, 77), np.int32), "token ids \\(N, L\\)"),
        (np.ones((1, 2, 77), np.int32), "token ids \\(N, L\\)"),
    ],
)
def test_bad_tokens_get_clear_errors(tiny, tokens, problem):
    model = build_model(tiny[0])
    with pytest.raises(ValueError, match=problem):
        model.encode_text(Tensor(tokens))


def test_faster_picks_the_quicker_function_and_stops_timing_a_much_slower_one():
    calls = []

    def slow(x):
        calls.append("slow")
        time.sleep(0.01)
        return x

    def fast(x):
        return x

    x = Tensor(np.zeros(1, np.float32))
    assert clip_model._faster(fast, slow, x)
    assert not clip_model._faster(slow, fast, x) and calls.count("slow") == 5  # 4 + 1 warm-up


def convolutions(model) -> list:
    return [c for _, c in model.visual.cells_and_names() if isinstance(c, clip_model.Conv2d)]


@pytest.mark.parametrize("native", [False, True])
def test_both_convolution_kernels_give_openais_numbers(native):
    weights, io = (dict(np.load(FIXTURES / f"tiny_resnet_{k}.npz")) for k in ("weights", "io"))
    model = build_model(weights)
    for conv in convolutions(model):
        conv.native = native
    model.visual._kernels_chosen = True
    eager = model.encode_image(Tensor(io["images"])).asnumpy()
    model.compile_encoders()
    compiled = model.encode_image(Tensor(io["images"])).asnumpy()
    assert relative_error(eager, io["image_features"]) <= 1e-4
    assert relative_error(compiled, io["image_features"]) <= 1e-4


def test_kernels_are_chosen_once_by_timing_for_each_larger_convolution(monkeypatch):
    weights = dict(np.load(FIXTURES / "tiny_resnet_weights.npz"))
    model, timed = build_model(weights), []

    def faster(first, second, x):
        timed.append(tuple(x.shape))
        return len(timed) % 2 == 1  # alternate, to see each layer keep its own answer

    monkeypatch.setattr(clip_model, "_faster", faster)
    larger = [c for c in convolutions(model) if c.kernel > 1]
    model.encode_image(np.zeros((2, 3, 64, 64), np.float32))
    model.encode_image(np.zeros((1, 3, 64, 64), np.float32))
    assert len(timed) == len(larger) and all(shape[0] == 1 for shape in timed)
    assert [c.native for c in larger] == [i % 2 == 0 for i in range(len(larger))]
    assert all(c.native is None for c in convolutions(model) if c.kernel == 1)


@pytest.mark.parametrize("unfolded, graph_batch", [(0, 8), (4, 8), (5, 1)])
def test_resnet_graphs_take_a_chunk_of_images_where_few_convolutions_unfold(
    monkeypatch, unfolded, graph_batch
):
    weights = dict(np.load(FIXTURES / "tiny_resnet_weights.npz"))
    io = dict(np.load(FIXTURES / "tiny_resnet_io.npz"))
    model, timed = build_model(weights), []

    def faster(first, second, x):
        timed.append(1)
        return len(timed) > unfolded

    monkeypatch.setattr(clip_model, "_faster", faster)
    model.compile_encoders()
    assert model.visual.graph_batch == graph_batch
    features = model.encode_image(Tensor(io["images"])).asnumpy()
    assert relative_error(features, io["image_features"]) <= 1e-4


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma {extra}

processor\t: 1
model name\t: another CPU
flags\t\t: fpu avx512f
"""


def test_cpu_info_reads_the_first_cpu_and_is_empty_without_the_file(tmp_path, monkeypatch):
    from clip import device

    monkeypatch.setattr(device, "CPUINFO", tmp_path / "cpuinfo")
    assert device.cpu_info() == {}
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra="avx512f avx512_vnni"))
    info = device.cpu_info()
    assert (info["model name"], info["cpu family"], info["model"]) == ("AMD EPYC", "25", "17")
    assert info["flags"].split() == ["fpu", "sse2", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert device._has_avx512()
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra="avx512_vnni"))  # no avx512f
    assert not device._has_avx512()


def test_resnets_cap_onednn_at_avx2_only_on_avx512_cpus_where_no_isa_was_chosen(
    tmp_path, monkeypatch
):
    from clip import device

    monkeypatch.setattr(device, "CPUINFO", tmp_path / "cpuinfo")

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra=""))
    assert not device.prefer_avx2_convolutions()
    assert "ONEDNN_MAX_CPU_ISA" not in device.os.environ
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra="avx512f"))
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE")  # the user's choice stands
    assert not device.prefer_avx2_convolutions()
    assert "ONEDNN_MAX_CPU_ISA" not in device.os.environ
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    assert not device.prefer_avx2_convolutions()
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    build_model(dict(np.load(FIXTURES / "tiny_resnet_weights.npz")))
    assert device.os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
