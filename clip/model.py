"""CLIP's image and text encoders in MindSpore, with OpenAI's parameter names."""

import time
import warnings
from collections import OrderedDict

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops
from mindspore.common.initializer import Constant, initializer
from mindspore.nn.utils import no_init_parameters

from .checkpoints.names import canonical
from .config import CLIPConfig, model_config
from .device import prefer_avx2_convolutions
from .summary import ModelSummary, summary

EXPORT = False  # set by clip.export: graphs with no Python loop over the batch, in ops ONNX exports


def l2_normalize(x: Tensor) -> Tensor:
    """Rows (the last axis) scaled to unit L2 norm."""
    return x / x.norm(dim=-1, keepdim=True)


def _param(*shape: int, fill: float = 0.0, grad: bool = True) -> Parameter:
    return Parameter(initializer(Constant(fill), shape, ms.float32), requires_grad=grad)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis in float32 with epsilon 1e-5, as OpenAI's."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = _param(width, fill=1.0)
        self.bias = _param(width)
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=1e-5)

    def construct(self, x):
        return self.norm(x, self.weight, self.bias)[0]


class BatchNorm2d(nn.Cell):
    """Inference-mode BatchNorm with torch's names (weight, bias, running_mean, running_var)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = _param(channels, fill=1.0)
        self.bias = _param(channels)
        self.running_mean = _param(channels, grad=False)
        self.running_var = _param(channels, fill=1.0, grad=False)
        self.norm = ops.BatchNorm(is_training=False, epsilon=1e-5)

    def construct(self, x):
        return self.norm(x, self.weight, self.bias, self.running_mean, self.running_var)[0]


class Linear(nn.Cell):
    """x @ weight.T + bias with torch's names and (out, in) weight layout, on (..., in) inputs."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = _param(c_out, c_in)
        self.bias = _param(c_out)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        if x.ndim == 2:
            return ops.bias_add(self.matmul(x, self.weight), self.bias)
        rows = ops.bias_add(self.matmul(x.reshape(-1, x.shape[-1]), self.weight), self.bias)
        return rows.reshape(*x.shape[:-1], -1)


class QuickGELU(nn.Cell):
    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class GELU(nn.Cell):
    """Exact (erf) GELU, as torch's nn.GELU(): open_clip's LAION models and HF's "gelu"."""

    def construct(self, x):
        # erf's own kernel, not ops.gelu's: the same function to float rounding, faster op by op
        erf = _erf if EXPORT else ops.erf  # ONNX export has no Erf
        return 0.5 * x * (1.0 + erf(x * 0.7071067811865476))


def _erf(x):
    """erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) in ops that ONNX export has (not
    Erf, Sign, nor Reciprocal, which a scalar divided by a tensor becomes)."""
    a = ops.abs(x)
    t = ops.div(ops.ones_like(a), 1.0 + 0.3275911 * a)
    poly = (
        (((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t
    y = 1.0 - poly * ops.exp(-a * a)
    return ops.where(x < 0, -y, y)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": GELU}


class Conv2d(nn.Cell):
    """Bias-free convolution with torch's weight layout and padding.

    For k > 1, which of MindSpore's CPU convolution and a matmul on unfolded columns (one image
    at a time: a batch's columns are k*k times its size, and a batched matmul would copy the
    weight for every image) is faster depends on the CPU and the shape: choose_kernels times both
    once per layer and sets `native`. Until then the unfolded matmul runs.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = _param(c_out, c_in, kernel, kernel)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.native = None

    def construct(self, x):
        k, s, p = self.kernel, self.stride, self.padding
        if k == 1 and s == 1 and p == 0:
            return ops.conv2d(x, self.weight)
        if EXPORT or self.native:  # ONNX export has no Im2Col, and the loop fixes the batch size
            return self.convolved(x)
        return self.unfolded(x)

    def convolved(self, x):
        """MindSpore's own convolution kernel."""
        return ops.conv2d(x, self.weight, stride=self.stride, pad_mode="pad", padding=self.padding)

    def unfolded(self, x):
        """A matmul of the flattened weight on each image's unfolded columns."""
        n, _, h, w = x.shape
        k, s, p = self.kernel, self.stride, self.padding
        weight = self.weight.reshape(self.weight.shape[0], -1)
        h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        images = []
        for image in ops.split(x, 1):
            columns = ops.unfold(image, kernel_size=k, padding=p, stride=s)
            images.append(ops.matmul(weight, columns.reshape(columns.shape[1:])))
        return ops.stack(images).reshape(n, -1, h_out, w_out)


def _faster(first, second, x: Tensor, repeats: int = 3) -> bool:
    """Whether first(x) runs faster than second(x): best of `repeats` calls after a warm-up each;
    a first whose warm-up takes over 3 times second's best is not timed further (on some CPUs
    MindSpore's convolution is 30 times slower, and its calls would cost seconds)."""

    def seconds(function) -> float:
        started = time.perf_counter()
        function(x).asnumpy()
        return time.perf_counter() - started

    seconds(second)
    best_second = min(seconds(second) for _ in range(repeats))
    if seconds(first) > 3 * best_second:
        return False
    return min(seconds(first) for _ in range(repeats)) < best_second


class PatchEmbedding(nn.Cell):
    """The ViT's stride = kernel convolution (torch's Conv2d weight) straight to tokens
    (N, grid**2, width): one 2-D matmul on the patches, no broadcast weight, no NCHW round trip.
    mint.permute, because a graph-mode Transpose keeps an 8-byte index per element."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        self.weight = _param(width, 3, patch_size, patch_size)
        self.project = ops.MatMul(transpose_b=True)

    def construct(self, x):
        n, c, h, w = x.shape
        k = self.weight.shape[-1]
        rows, cols = h // k, w // k
        x = x.reshape(n, c, rows, k, cols, k)
        if EXPORT:  # mint.permute is TransposeView, which ONNX export lacks
            x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
        else:
            x = mint.permute(x, (0, 2, 4, 1, 3, 5))
        patches = x.reshape(n * rows * cols, c * k * k)
        weight = self.weight.reshape(self.weight.shape[0], -1)
        return self.project(patches, weight).reshape(n, rows * cols, -1)


def _avgpool(stride: int) -> nn.Cell:
    return nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()


PER_HEAD_TOKENS = 256  # from this many query tokens in a batch, attention runs head by head
_scores = ops.BatchMatMul(transpose_b=True)


def _probabilities(weights, mask, offset):
    if mask is not None:
        weights = weights + mask
    weights = ops.softmax(weights, axis=-1)
    return weights if offset is None else weights + offset


def _attention(q, k, v, heads: int, mask=None, offset=None):
    """Scaled dot-product attention of (N, Lq, D) queries over (N, L, D) keys and values, and its
    probabilities (N, heads, Lq, L); mask is (N, Lq, L). A given offset is added to the
    probabilities: with zeros the numbers do not change and gradients with respect to the offset
    are those of the probabilities.

    Under PER_HEAD_TOKENS query tokens all heads run at once (fewer kernels); from there a head
    (column slice) at a time, without transposes: they are slow on the CPU and keep an 8-byte index
    per element in graph mode.
    """
    n, lq, width = q.shape
    head_dim = width // heads
    if EXPORT or n * lq < PER_HEAD_TOKENS:  # export: no branch on a dynamic batch
        length = k.shape[1]
        q = q.reshape(n, lq, heads, head_dim).transpose(0, 2, 1, 3) * head_dim**-0.5
        k = k.reshape(n, length, heads, head_dim).transpose(0, 2, 3, 1)
        v = v.reshape(n, length, heads, head_dim).transpose(0, 2, 1, 3)
        mask = None if mask is None else mask[:, None]
        weights = _probabilities(ops.matmul(q, k), mask, offset)
        return ops.matmul(weights, v).transpose(0, 2, 1, 3).reshape(n, lq, width), weights
    outputs, probs = [], []
    for h in range(heads):
        head = slice(h * head_dim, (h + 1) * head_dim)
        weights = _scores(q[:, :, head] * head_dim**-0.5, k[:, :, head])
        weights = _probabilities(weights, mask, None if offset is None else offset[:, h])
        probs.append(weights)
        outputs.append(ops.matmul(weights, v[:, :, head]))
    return ops.cat(outputs, axis=-1), ops.stack(probs, axis=1)


class MultiheadAttention(nn.Cell):
    """Self-attention with torch's fused in_proj (q, k, v rows in that order) and out_proj; returns
    the output and the attention probabilities, as torch's does."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = _param(3 * width, width)
        self.in_proj_bias = _param(3 * width)
        self.out_proj = Linear(width, width)
        self.project = ops.MatMul(transpose_b=True)

    def construct(self, rows, n: int, mask=None, offset=None):
        """Output rows (N * L, D) of input rows (N * L, D) of n sequences, and probabilities."""
        width = rows.shape[-1]
        qkv = ops.bias_add(self.project(rows, self.in_proj_weight), self.in_proj_bias)
        q, k, v = ops.split(qkv.reshape(n, -1, 3 * width), width, axis=-1)
        out, probs = _attention(q, k, v, self.heads, mask, offset)
        return self.out_proj(out.reshape(-1, width)), probs


class ResidualAttentionBlock(nn.Cell):
    def __init__(self, width: int, heads: int, mlp_width: int, activation: str):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.SequentialCell(
            OrderedDict(
                [
                    ("c_fc", Linear(width, mlp_width)),
                    ("gelu", ACTIVATIONS[activation]()),
                    ("c_proj", Linear(mlp_width, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def construct(self, x, mask=None, offset=None):
        # on (N * L, D) rows: 2-D norms and linear layers take the least time run op by op
        n, length, width = x.shape
        x = x.reshape(-1, width)
        out, probs = self.attn(self.ln_1(x), n, mask, offset)
        x = x + out
        return (x + self.mlp(self.ln_2(x))).reshape(n, length, width), probs


def _batch_mask(x, mask):
    """The (L, L) mask broadcast once to (N, L, L): in graph mode a broadcasting add keeps an index
    table per node and is much slower than an add of equal shapes."""
    return None if mask is None else ops.broadcast_to(mask, (x.shape[0], *mask.shape))


class Transformer(nn.Cell):
    """A stack of residual attention blocks on batch-first (N, L, D) inputs."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_width: int | None = None,
        activation: str = "quick_gelu",
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        block = (width, heads, mlp_width or 4 * width, activation)
        self.resblocks = nn.CellList([ResidualAttentionBlock(*block) for _ in range(layers)])

    def construct(self, x, mask=None):
        mask = _batch_mask(x, mask)
        for block in self.resblocks:  # not trace: its lists would hold every block's tensors
            x = block(x, mask)[0]
        return x

    def trace(self, x, mask=None, offsets=None) -> tuple:
        """The output, each block's input and each block's attention probabilities (N, heads, L, L);
        offsets[i], when given, is added to block i's probabilities (see _attention)."""
        mask = _batch_mask(x, mask)
        inputs, probs = [], []
        for i, block in enumerate(self.resblocks):
            inputs.append(x)
            x, p = block(x, mask, None if offsets is None else offsets[i])
            probs.append(p)
        return x, inputs, probs


class Bottleneck(nn.Cell):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 1)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, padding=1)
        self.bn2 = BatchNorm2d(planes)
        self.avgpool = _avgpool(stride)
        self.conv3 = Conv2d(planes, planes * self.expansion, 1)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.SequentialCell(
                OrderedDict(
                    [
                        ("-1", _avgpool(stride)),
                        ("0", Conv2d(inplanes, planes * self.expansion, 1)),
                        ("1", BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AttentionPool2d(nn.Cell):
    """Attention pooling: the mean token attends over all spatial positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = _param(spacial_dim**2 + 1, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.c_proj = Linear(embed_dim, output_dim)
        self.heads = heads

    def construct(self, x):
        return self.trace(x)[0]

    def trace(self, x) -> tuple:
        """The pooled features and the mean token's attention probabilities (N, heads, 1, 1+h*w)."""
        n, c = x.shape[:2]
        heads, head_dim = self.heads, c // self.heads
        x = x.reshape(n, c, -1).transpose(0, 2, 1)
        x = ops.cat([x.mean(axis=1, keep_dims=True), x], axis=1) + self.positional_embedding
        # One query, so keys and values of every token (most of the pool's work) are never formed:
        # head h's score of token x is q_h . (K_h x + k_h) = (K_h^T q_h) . x + q_h . k_h, the last
        # the same for every token (softmax drops it), and its output is V_h (sum_j p_j x_j) + v_h.
        q = self.q_proj(x[:, 0]) * head_dim**-0.5
        q = q.reshape(n, heads, head_dim).transpose(1, 0, 2)  # (heads, n, d)
        query = ops.matmul(q, self.k_proj.weight.reshape(heads, head_dim, c))  # (heads, n, c)
        probs = ops.softmax(_scores(query.transpose(1, 0, 2), x), axis=-1)  # (n, heads, L)
        pooled = ops.matmul(probs, x).transpose(1, 0, 2)  # (heads, n, c)
        out = _scores(pooled, self.v_proj.weight.reshape(heads, head_dim, c))  # (heads, n, d)
        out = out.transpose(1, 0, 2).reshape(n, c) + self.v_proj.bias
        return self.c_proj(out), probs[:, :, None]


UNROLLED_CONVOLUTIONS = 32  # at most this many per-image convolutions in one compiled graph


class ModifiedResNet(nn.Cell):
    """OpenAI's ResNet: a 3-conv stem, anti-aliased strided blocks, attention pooling."""

    graph_batch = 1  # images per compiled graph while a Conv2d runs image by image (README)

    def __init__(
        self, layers: tuple, output_dim: int, heads: int, input_resolution: int, width: int
    ):
        super().__init__()
        prefer_avx2_convolutions()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.conv1 = Conv2d(3, width // 2, 3, stride=2, padding=1)
        self.bn1 = BatchNorm2d(width // 2)
        self.conv2 = Conv2d(width // 2, width // 2, 3, padding=1)
        self.bn2 = BatchNorm2d(width // 2)
        self.conv3 = Conv2d(width // 2, width, 3, padding=1)
        self.bn3 = BatchNorm2d(width)
        self.avgpool = _avgpool(2)
        self.relu = nn.ReLU()
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)
        self._kernels_chosen = False

    def choose_kernels(self) -> None:
        """Time each k > 1 convolution both ways (Conv2d) on its own input shape, once per model,
        and keep the faster; the numbers agree to float rounding. Where few run unfolded (a loop
        over images that a graph unrolls), compiled graphs take VisionTransformer.graph_batch
        images at a time."""
        if self._kernels_chosen:
            return

        def choose(conv: Conv2d, inputs: tuple) -> None:
            if conv.kernel > 1 and conv.native is None:
                conv.native = _faster(conv.convolved, conv.unfolded, inputs[0][:1])

        # a PyNative pass with hooks, so that no graph ever sees the timing code
        layers = [c for _, c in self.cells_and_names() if isinstance(c, Conv2d)]
        hooks = [conv.register_forward_pre_hook(choose) for conv in layers]
        try:
            n_px, dtype = self.input_resolution, self.conv1.weight.dtype
            self(ops.zeros((1, 3, n_px, n_px), dtype))
        finally:
            for hook in hooks:
                hook.remove()
        unfolded = sum(not conv.native for conv in layers if conv.kernel > 1)
        if unfolded * VisionTransformer.graph_batch <= UNROLLED_CONVOLUTIONS:
            self.graph_batch = VisionTransformer.graph_batch
        self._kernels_chosen = True

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.SequentialCell:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.SequentialCell(layers)

    def stages(self, x):
        """The last stage's (layer4's) activations (N, C, h, w): the input of the attention pool."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def construct(self, x):
        return self.attnpool(self.stages(x))


class VisionTransformer(nn.Cell):
    graph_batch = 8  # images per compiled graph: each shape's graph is kept for good (README)

    def __init__(
        self,
        input_resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mlp_width: int | None = None,
        activation: str = "quick_gelu",
    ):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = PatchEmbedding(width, patch_size)
        self.class_embedding = _param(width)
        self.positional_embedding = _param((input_resolution // patch_size) ** 2 + 1, width)
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_width, activation)
        self.ln_post = LayerNorm(width)
        self.proj = _param(width, output_dim)

    def embed(self, x):
        """The transformer's input tokens (N, 1 + grid**2, width): class token, then patches."""
        x = self.conv1(x)
        n, _, width = x.shape
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, width), (n, 1, width))
        return self.ln_pre(ops.cat([cls, x], axis=1) + self.positional_embedding)

    def head(self, tokens):
        """Output tokens (..., width) to the embedding space (..., output_dim): ln_post, proj."""
        return ops.matmul(self.ln_post(tokens), self.proj)

    def construct(self, x):
        return self.head(self.transformer(self.embed(x))[:, 0, :])

    def trace(self, x, offsets=None) -> tuple:
        """The image features, and the transformer's trace: block inputs and attention
        probabilities, with offsets as in Transformer.trace (as CLIP.trace_tokens for text)."""
        x, inputs, probs = self.transformer.trace(self.embed(x), offsets=offsets)
        return self.head(x[:, 0, :]), inputs, probs


class Embedding(nn.Cell):
    """Token embedding table named as torch's nn.Embedding (weight)."""

    def __init__(self, vocab_size: int, width: int):
        super().__init__()
        self.weight = _param(vocab_size, width)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class _GraphWeights:
    """Keeps compiled graphs on the weights' current values. A graph reads each parameter from
    the memory it had when the graph was compiled: set_data, param[...] = and
    load_param_into_net give a parameter new memory, which the graph would never read. Before a
    graph runs, sync() copies such a parameter into its old memory and points it back there."""

    def __init__(self, cell: nn.Cell):
        self.params = list(cell.get_parameters())
        self.memory = [Tensor(p) for p in self.params]  # the same memory, not a view
        self.pointers = [m.data_ptr() for m in self.memory]

    def sync(self) -> None:
        for param, memory, pointer in zip(self.params, self.memory, self.pointers, strict=True):
            if param.data_ptr() != pointer:
                memory.copy_(param)
                param.set_data(memory)

    def run(self, graph):
        """graph, called after a sync."""

        def synced(*args):
            self.sync()
            return graph(*args)

        return synced


class CLIP(nn.Cell):
    """OpenAI's CLIP: encode_image, encode_text, and scaled cosine logits between them."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        if config.resnet:
            self.visual = ModifiedResNet(
                config.vision_layers,
                config.embed_dim,
                config.vision_heads,
                config.image_resolution,
                config.vision_width,
            )
        else:
            self.visual = VisionTransformer(
                config.image_resolution,
                config.vision_patch_size,
                config.vision_width,
                config.vision_layers,
                config.vision_heads,
                config.embed_dim,
                config.vision_mlp_width,
                config.activation,
            )
        width = config.transformer_width
        self.transformer = Transformer(
            width,
            config.transformer_layers,
            config.transformer_heads,
            config.transformer_mlp_width,
            config.activation,
        )
        self.token_embedding = Embedding(config.vocab_size, width)
        self.positional_embedding = _param(config.context_length, width)
        self.ln_final = LayerNorm(width)
        self.text_projection = _param(width, config.embed_dim)
        self.logit_scale = _param(fill=float(np.log(1 / 0.07)))
        length = config.context_length
        self.attn_mask = Tensor(np.triu(np.full((length, length), -np.inf, np.float32), 1))
        self._image_graph = None
        self._text_graph = None
        self._graph_weights = None
        self.set_train(False)

    @property
    def dtype(self) -> ms.Type:
        """Compute dtype of the encoders."""
        return self.visual.conv1.weight.dtype

    def summary(self) -> ModelSummary:
        """Architecture, input, parameter count and dtype, as text or HTML."""
        return summary(self)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def compile_encoders(self) -> None:
        """Run both encoders as compiled MindSpore graphs (jit) from now on, images
        visual.graph_batch at a time. The graphs see every later change of the weights."""
        if isinstance(self.visual, ModifiedResNet):  # a graph keeps the kernels it was given
            self.visual.choose_kernels()
        if self._graph_weights is None:  # once: graphs outlive a new jit of the same method
            self._graph_weights = _GraphWeights(self)
        self._image_graph = self._graph_weights.run(ms.jit(self.visual.construct))
        self._text_graph = self._graph_weights.run(ms.jit(self.encode_tokens))

    def encode_tokens(self, text, eot):
        """Text features of (N, L) token ids pooled at the given eot positions."""
        return self.trace_tokens(text, eot)[0]

    def trace_tokens(self, text, eot, offsets=None) -> tuple:
        """encode_tokens, and the text transformer's trace: block inputs and attention
        probabilities, with offsets as in Transformer.trace."""
        length = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:length]
        x, inputs, probs = self.transformer.trace(x, self.attn_mask[:length, :length], offsets)
        x = self.ln_final(x)
        rows = ops.stack((ops.arange(x.shape[0], dtype=eot.dtype), eot), axis=-1)
        return ops.matmul(ops.gather_nd(x, rows), self.text_projection), inputs, probs

    def encode_image(self, image, normalize: bool = False) -> Tensor:
        """Image features (N, embed_dim) of preprocessed images (N, 3, H, W) or one (3, H, W),
        L2-normalised with normalize=True."""
        image = self._check_image(image)
        if self._image_graph is None:
            if isinstance(self.visual, ModifiedResNet):
                self.visual.choose_kernels()
            features = self.visual(image)
        else:
            # a batch's last chunk is padded to a full one: one graph serves every batch size
            count, chunk = image.shape[0], self.visual.graph_batch
            short = -count % chunk if count > chunk else 0
            if short:
                image = ops.cat((image, ops.tile(image[-1:], (short, 1, 1, 1))))
            parts = ops.split(image, chunk)
            # a graph given a slice of a larger tensor can read from the tensor's start (seen
            # with MindSpore 2.10's CPU convolution as a graph's first op): give it its own copy
            parts = [self._image_graph(p.copy() if len(parts) > 1 else p) for p in parts]
            features = (parts[0] if len(parts) == 1 else ops.cat(parts))[:count]
        return l2_normalize(features) if normalize else features

    def encode_text(self, text, normalize: bool = False) -> Tensor:
        """Text features (N, embed_dim) of token ids (N, L) or one row (L,), L2-normalised with
        normalize=True."""
        tokens = self._check_text(text)
        eot = tokens.argmax(axis=-1).astype(np.int32)
        # Causal attention: positions after the last eot cannot change any eot feature. A graph
        # compiles once per length, so it gets the length rounded up to a multiple of 8.
        length = int(eot.max()) + 1
        encode = self.encode_tokens
        if self._text_graph:
            length, encode = min(-(-length // 8) * 8, tokens.shape[1]), self._text_graph
        features = encode(Tensor(tokens[:, :length]), Tensor(eot))
        return l2_normalize(features) if normalize else features

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """logits_per_image (N_images, N_texts): the logit scale times the cosine similarity of
        image and text features (normalised here, so raw or unit features both work)."""
        similarity = ops.matmul(l2_normalize(image_features), l2_normalize(text_features).T)
        return self.logit_scale.exp() * similarity

    def construct(self, image, text):
        logits_per_image = self.logits(self.encode_image(image), self.encode_text(text))
        return logits_per_image, logits_per_image.T

    def _check_image(self, image) -> Tensor:
        if not isinstance(image, (Tensor, np.ndarray)):
            raise TypeError(
                f"image must be a mindspore Tensor or numpy array, got {type(image).__name__}; "
                "use the preprocess returned by clip.load to turn a PIL image into one"
            )
        if image.ndim == 3:
            image = image[None]
        n_px = self.visual.input_resolution
        if image.ndim != 4 or tuple(image.shape[1:]) != (3, n_px, n_px):
            raise ValueError(
                f"image has shape {tuple(image.shape)}; this model takes (N, 3, {n_px}, {n_px}) "
                f"or (3, {n_px}, {n_px}): preprocess images with clip.load's preprocess"
            )
        if isinstance(image, np.ndarray):
            image = Tensor(image)
        if not image.is_floating_point():
            raise ValueError(
                f"image has dtype {str(image.dtype).lower()}; "
                "a float image normalised by preprocess is expected"
            )
        return image if image.dtype == self.dtype else image.astype(self.dtype)

    def _check_text(self, text) -> np.ndarray:
        if not isinstance(text, (Tensor, np.ndarray)):
            raise TypeError(
                f"text must be token ids from clip.tokenize (a Tensor), got {type(text).__name__}"
            )
        tokens = text.asnumpy() if isinstance(text, Tensor) else np.asarray(text)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[0] == 0 or not 0 < tokens.shape[1]:
            raise ValueError(f"text has shape {tokens.shape}; token ids (N, L) are expected")
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"text has {tokens.shape[1]} tokens per row; this model's context length is "
                f"{self.context_length}: tokenize with context_length={self.context_length}"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"text has dtype {tokens.dtype}; integer token ids are expected")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(
                f"token ids range over [{tokens.min()}, {tokens.max()}], outside this model's "
                f"vocabulary [0, {self.vocab_size}): were they made by another tokenizer?"
            )
        return tokens.astype(np.int32)


def non_finite(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    arrays = {name: np.asarray(value) for name, value in state_dict.items()}
    floats = {name: a for name, a in arrays.items() if np.issubdtype(a.dtype, np.floating)}
    return [name for name, array in floats.items() if not np.isfinite(array).all()]


def _unfilled(given: dict, config: CLIPConfig | None) -> CLIP:
    """A CLIP of config (default: the shapes' OpenAI rules) whose parameters are placeholders
    taking no memory, after checking that the canonical state dict `given` fits it exactly."""
    with no_init_parameters():
        model = CLIP(config or model_config(given))
    params = dict(model.parameters_and_names())
    problems = []
    if missing := [k for k in params if k not in given]:
        problems.append(f"missing {len(missing)} keys: {', '.join(missing[:8])}")
    if unexpected := [k for k in given if k not in params]:
        problems.append(f"unexpected {len(unexpected)} keys: {', '.join(unexpected[:8])}")
    for name, param in params.items():
        if name in given and tuple(np.shape(given[name])) != param.shape:
            problems.append(f"{name} has shape {np.shape(given[name])}, expected {param.shape}")
    if problems:
        raise ValueError("state dict does not fit a CLIP: " + "; ".join(problems))
    return model


def check_fits(state_dict: dict, config: CLIPConfig | None = None) -> CLIPConfig:
    """The architecture of the CLIP a state dict fits (see build_model), without building it; a
    ValueError says what does not fit."""
    return _unfilled(canonical(state_dict), config).config


def build_model(state_dict: dict, release: bool = False, config: CLIPConfig | None = None) -> CLIP:
    """A CLIP whose float32 weights come from a state dict (OpenAI's names, or any convention
    clip.checkpoints reads), its architecture from config (default: the shapes, OpenAI's rules).

    release=True empties state_dict as its arrays are copied into the model, so that a caller
    holding no other reference to them never has two copies of the weights in memory.
    """
    given = canonical(state_dict)
    model = _unfilled(given, config)
    if bad := non_finite(given):  # a model that outputs NaN should not be a silent surprise
        warnings.warn(
            f"{len(bad)} tensors hold NaN or Inf values ({', '.join(bad[:5])}"
            f"{', ...' * (len(bad) > 5)}), so the model's outputs will be NaN; the checkpoint is "
            "damaged or was saved from a diverged training run",
            UserWarning,
            stacklevel=2,
        )
    if release:
        state_dict.clear()
    for name, param in model.parameters_and_names():
        param.set_data(Tensor(np.asarray(given.pop(name), dtype=np.float32)))
    return model
