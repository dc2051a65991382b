"""Model configs: open_clip's and Hugging Face's JSON read to the architecture, the rest refused."""

import json

import pytest

from clip.config import CLIPConfig, UnsupportedModel, from_hf, from_open_clip, read_config

# open_clip's published ViT-H-14 (model_configs/ViT-H-14.json): head_width 80, exact GELU
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                   "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                 "layers": 24},
}  # fmt: skip


def test_open_clip_config_sets_heads_activation_and_mlp():
    config = from_open_clip(VIT_H_14)
    assert (config.vision_heads, config.transformer_heads) == (16, 16)  # OpenAI's rule: 20, 16
    assert config.activation == "gelu"
    assert (config.vision_mlp_width, config.transformer_mlp_width) == (5120, 4096)
    assert (config.image_resolution, config.vision_patch_size, config.vision_layers) == (
        224,
        14,
        32,
    )
    g14 = dict(VIT_H_14, quick_gelu=True)
    g14["vision_cfg"] = dict(VIT_H_14["vision_cfg"], width=1408, head_width=88, mlp_ratio=4.3637)
    config = from_open_clip({"model_cfg": g14, "preprocess_cfg": {"mean": [0.5] * 3}})
    assert config.activation == "quick_gelu" and config.vision_heads == 16
    assert config.vision_mlp_width == int(1408 * 4.3637) == 6144
    assert config.image_mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "change,named",
    [
        ({"init_logit_bias": -10}, "SigLIP"),
        ({"multimodal_cfg": {"width": 512}}, "CoCa"),
        ({"vision_cfg": {"timm_model_name": "convnext_base"}}, "timm image tower"),
        ({"text_cfg": {"hf_model_name": "xlm-roberta-base"}}, "Hugging Face text tower"),
        ({"vision_cfg": {"ls_init_value": 1e-5}}, "LayerScale"),
        ({"vision_cfg": {"pool_type": "avg"}}, "vision_cfg.pool_type='avg'"),
        ({"text_cfg": {"proj_bias": True}}, "text_cfg.proj_bias=True"),
        ({"vision_cfg": {"layers": [3, 4, 6, 3]}}, "vision_cfg.layers"),
        ({"vision_cfg": {"a_new_option": 1}}, "vision_cfg.a_new_option=1"),
    ],
)
def test_what_open_clip_sets_and_this_port_cannot_run_is_refused_by_name(change, named):
    towers = ("vision_cfg", "text_cfg")
    config = {**VIT_H_14, **{k: v for k, v in change.items() if k not in towers}}
    for tower in towers:
        config[tower] = {**VIT_H_14[tower], **change.get(tower, {})}
    with pytest.raises(UnsupportedModel, match=named):
        from_open_clip(config)


def test_hugging_face_config_with_transformers_defaults():
    config = from_hf({"model_type": "clip", "projection_dim": 512,
                      "vision_config": {"hidden_act": "gelu", "intermediate_size": 200,
                                        "hidden_size": 96, "num_attention_heads": 3},
                      "text_config": {"hidden_act": "gelu"}})  # fmt: skip
    assert config.activation == "gelu"
    assert (config.vision_width, config.vision_heads, config.vision_mlp_width) == (96, 3, 200)
    # the rest from CLIPTextConfig / CLIPVisionConfig defaults
    assert (config.transformer_width, config.transformer_heads) == (512, 8)
    assert (config.image_resolution, config.vision_patch_size, config.context_length) == (
        224,
        32,
        77,
    )


def test_hugging_face_config_dicts_of_older_transformers_are_merged():
    config = from_hf({"text_config": {"hidden_act": "quick_gelu"},
                      "text_config_dict": {"hidden_act": "gelu", "hidden_size": 1024,
                                           "num_attention_heads": 16},
                      "vision_config_dict": {"hidden_act": "gelu"}})  # fmt: skip
    assert (config.activation, config.transformer_width, config.transformer_heads) == (
        "gelu",
        1024,
        16,
    )


@pytest.mark.parametrize(
    "config,named",
    [
        ({"model_type": "siglip"}, "'siglip'"),
        ({"text_config": {"hidden_act": "gelu"}}, "quick_gelu or gelu is supported"),
        ({"vision_config": {"layer_norm_eps": 1e-6}}, "layer_norm_eps"),
        ({"text_config": {"eos_token_id": 7}}, "eos_token_id=7"),
    ],
)
def test_hugging_face_models_this_port_cannot_run_are_refused(config, named):
    with pytest.raises(UnsupportedModel, match=named):
        from_hf(config)


def test_read_config_takes_a_config_a_dict_a_file_or_a_name(tmp_path):
    config = from_open_clip(VIT_H_14)
    assert read_config(config) is config
    assert read_config(VIT_H_14) == config
    (tmp_path / "c.json").write_text(json.dumps({"model_cfg": VIT_H_14}))
    assert read_config(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="neither a file nor a shipped open_clip config"):
        read_config("ViT-Z-99")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a config is a JSON object"):
        read_config(tmp_path / "bad.json")


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="activation must be"):
        CLIPConfig(64, 32, 1, 64, 8, 16, 64, 64, 1, activation="relu")


@pytest.mark.parametrize(
    "name,heads,mlp",
    [
        ("ViT-B-32", (12, 8), (3072, 2048)),
        ("ViT-H-14", (16, 16), (5120, 4096)),  # head_width 80: not OpenAI's 20 heads
        ("ViT-g-14", (16, 16), (6144, 4096)),  # head_width 88, mlp_ratio 4.3637
        ("ViT-bigG-14", (16, 20), (8192, 5120)),  # head_width 104, mlp_ratio 4.9231
    ],
)
def test_shipped_open_clip_configs_by_name(name, heads, mlp):
    config = read_config(name)
    assert (config.vision_heads, config.transformer_heads) == heads
    assert (config.vision_mlp_width, config.transformer_mlp_width) == mlp
    assert config.activation == "gelu"
    if name != "ViT-g-14":  # published without a -quickgelu variant
        assert read_config(f"{name}-quickgelu").activation == "quick_gelu"
