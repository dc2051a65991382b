"""jit=True sees the model's current weights after every public way of changing them."""

import mindspore as ms
import numpy as np
import pytest
from helpers import relative_error
from mindspore import Parameter, Tensor, ops
from mindspore.graph import api as graph_api

from clip.model import build_model


@ms.jit
def _assign_in_graph(param, value):  # as an optimizer step does
    ops.assign(param, value)
    return param


CHANGES = {
    "set_data": lambda p, v, m: p.set_data(Tensor(v)),
    "set_data float16": lambda p, v, m: p.set_data(Tensor(v.astype(np.float16))),
    "setitem all": lambda p, v, m: p.__setitem__(Ellipsis, Tensor(v)),
    "setitem row": lambda p, v, m: p.__setitem__(0, Tensor(v[0])),
    "assign": lambda p, v, m: ops.assign(p, Tensor(v)),
    "assign in a graph": lambda p, v, m: _assign_in_graph(p, Tensor(v)),
    "copy_": lambda p, v, m: p.copy_(Tensor(v)),
    "load_param_into_net": lambda p, v, m: ms.load_param_into_net(
        m, {p.name: Parameter(Tensor(v), name=p.name)}, strict_load=False
    ),
    "interpolate (WiSE-FT)": lambda p, v, m: p.set_data(p * 0.5 + Tensor(v) * 0.5),
}


def _encoder_graphs() -> int:
    # MindSpore has no public count of compiled graphs; its cache is keyed by the function
    return sum("construct" in k or "encode_tokens" in k for k in graph_api.ms_compile_cache)


@pytest.mark.parametrize("change", list(CHANGES))
def test_jit_sees_changed_weights(tiny, change):
    weights, io = tiny
    eager, compiled = build_model(dict(weights)), build_model(dict(weights))
    compiled.compile_encoders()
    images, tokens = Tensor(io["images"]), Tensor(io["tokens"])
    before = compiled.encode_image(images).asnumpy(), compiled.encode_text(tokens).asnumpy()
    graphs = _encoder_graphs()
    image = "visual.proj" if "visual.proj" in weights else "visual.attnpool.c_proj.weight"
    rng = np.random.default_rng(0)
    # then an in-place write, which must reach the graphs after a change of memory too
    for step in (CHANGES[change], CHANGES["copy_"]):
        values = {
            name: rng.standard_normal(weights[name].shape).astype(np.float32) * 0.1
            for name in (image, "text_projection", "token_embedding.weight")
        }
        for model in (eager, compiled):
            params = dict(model.parameters_and_names())
            for name, value in values.items():
                step(params[name], value, model)
        for encode, old in (
            (lambda m: m.encode_image(images), before[0]),
            (lambda m: m.encode_text(tokens), before[1]),
        ):
            expected, actual = encode(eager).asnumpy(), encode(compiled).asnumpy()
            assert not np.allclose(expected, old)  # the change changes the features
            assert relative_error(actual, expected) <= 1e-4
    assert _encoder_graphs() == graphs  # nothing was compiled again
