"""Per-op speeds on this CPU: the matmul forms a ViT's linear layers could use, its MLP
activations, a ReLU's cost in a compiled graph, and the two kernels of ResNet 3x3 convolutions
(clip.model.Conv2d), on the shapes ViT-B/32 and RN50 run.

The fastest op differs between CPUs (see the README's tables): this prints the figures that
decide it on the host it runs on. fp32, 2 threads, MindSpore with launch_blocking, best of 7.
Run: .venv/bin/python benchmarks/kernels.py
"""

import argparse
import time

import numpy as np
from host import describe


def seconds(function, *args, repeats: int = 7) -> float:
    """Best wall time of `repeats` calls after a warm-up."""
    function(*args).asnumpy()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args).asnumpy()
        times.append(time.perf_counter() - started)
    return min(times)


def matmuls(rows: int, width: int, out: int) -> dict[str, float]:
    """GFLOP/s of each linear-layer form on (rows, width) inputs and an (out, width) weight."""
    from mindspore import Tensor, mint, nn, ops

    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((rows, width), dtype=np.float32))
    weight = rng.standard_normal((out, width), dtype=np.float32) * 0.02
    w, w_t = Tensor(weight), Tensor(np.ascontiguousarray(weight.T))
    bias = Tensor(rng.standard_normal(out, dtype=np.float32))
    dense = nn.Dense(width, out)
    dense.weight.set_data(w)
    dense.bias.set_data(bias)
    transposed, plain = ops.MatMul(transpose_b=True), ops.MatMul()
    forms = {
        "nn.Dense": lambda: dense(x),
        "MatMul(transpose_b)": lambda: transposed(x, w),
        "MatMul(transpose_b) + bias_add": lambda: ops.bias_add(transposed(x, w), bias),
        "MatMul on W.T": lambda: plain(x, w_t),
        "mint.matmul on W.T": lambda: mint.matmul(x, w_t),
        "ops.dense": lambda: ops.dense(x, w, bias),
    }
    flops = 2 * rows * width * out / 1e9
    return {name: flops / seconds(form) for name, form in forms.items()}


def convolutions(batch: int, channels: int, size: int) -> dict[str, float]:
    """Milliseconds of MindSpore's convolution and unfold + matmul for one 3x3 layer."""
    from mindspore import Tensor

    from clip.model import Conv2d

    rng = np.random.default_rng(0)
    conv = Conv2d(channels, channels, 3, padding=1)
    conv.weight.set_data(Tensor(rng.standard_normal(conv.weight.shape, dtype=np.float32) * 0.02))
    x = Tensor(rng.standard_normal((batch, channels, size, size), dtype=np.float32))
    return {
        "convolution": 1e3 * seconds(conv.convolved, x, repeats=3),
        "unfold + matmul": 1e3 * seconds(conv.unfolded, x, repeats=3),
    }


def pointwise(batch: int, c_in: int, c_out: int, size: int) -> dict[str, float]:
    """Milliseconds of a 1x1 convolution as MindSpore's convolution and as matmuls."""
    from mindspore import Tensor, ops

    rng = np.random.default_rng(0)
    weight = Tensor(rng.standard_normal((c_out, c_in, 1, 1), dtype=np.float32) * 0.02)
    flat = weight.reshape(c_out, c_in)
    x = Tensor(rng.standard_normal((batch, c_in, size, size), dtype=np.float32))

    def per_image(x):
        images = [ops.matmul(flat, image.reshape(c_in, -1)) for image in ops.split(x, 1)]
        return ops.stack(images)

    return {
        "convolution": 1e3 * seconds(lambda x: ops.conv2d(x, weight), x, repeats=3),
        "matmul per image": 1e3 * seconds(per_image, x, repeats=3),
        "batched matmul": 1e3
        * seconds(lambda x: ops.matmul(flat, x.reshape(batch, c_in, -1)), x, repeats=3),
    }


def activations(rows: int, width: int) -> dict[str, float]:
    """Milliseconds of each MLP activation on (rows, width) inputs of a unit normal, op by op and
    compiled (jit)."""
    import mindspore as ms
    from mindspore import Tensor, ops

    from clip.model import GELU, QuickGELU

    x = Tensor(np.random.default_rng(0).standard_normal((rows, width), dtype=np.float32))

    def gelu_op(x):
        return ops.gelu(x, approximate="none")

    forms = {
        "ops.gelu (exact)": gelu_op,
        "clip GELU (erf)": GELU().construct,
        "clip QuickGELU": QuickGELU().construct,
    }
    figures = {}
    for name, form in forms.items():
        figures[name] = 1e3 * seconds(form, x)
        figures[f"{name}, jit"] = 1e3 * seconds(ms.jit(form), x)
    return figures


def chained_relu(shape: tuple[int, ...], length: int = 100) -> float:
    """Microseconds each further ReLU adds to one compiled chain of them on `shape`: a kernel's
    launch and its fresh output buffer, with no Python in between."""
    import mindspore as ms
    from mindspore import Tensor, ops

    def chain(count: int):
        def run(x):
            for _ in range(count):
                x = ops.relu(x)
            return x

        return ms.jit(run)

    x = Tensor(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    return 1e6 * (seconds(chain(1 + length), x) - seconds(chain(1), x)) / length


# ViT-B/32: 50 tokens per image; in_proj, c_fc, c_proj, out_proj at batch 32 and 1
LINEAR_SHAPES = [(1600, 768, 2304), (1600, 768, 3072), (1600, 3072, 768), (1600, 768, 768)]
LINEAR_SHAPES += [(50, 768, 3072), (50, 3072, 768)]
# RN50's 3x3 convolutions (channels, size): the stem's second, and each stage's later blocks
CONV_SHAPES = [(32, 112), (64, 56), (128, 28), (256, 14), (512, 7)]
# and its 1x1 convolutions (in, out, size): each stage's expansion and reduction
POINTWISE_SHAPES = [(64, 256, 56), (256, 64, 56), (128, 512, 28), (512, 128, 28)]
POINTWISE_SHAPES += [(256, 1024, 14), (1024, 256, 14), (512, 2048, 7), (2048, 512, 7)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per convolution call")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_device("CPU")
    ms.runtime.launch_blocking()
    print(describe("mindspore", "numpy"))
    print("\nlinear layers, GFLOP/s (rows x width -> out)")
    for shape in LINEAR_SHAPES:
        figures = matmuls(*shape)
        print(f"{shape}: " + ", ".join(f"{name} {value:.0f}" for name, value in figures.items()))
    print("\nMLP activations at ViT-B/32 batch 32, ms (rows x width)")
    figures = activations(1600, 3072)
    print("(1600, 3072): " + ", ".join(f"{name} {value:.1f}" for name, value in figures.items()))
    print("\nReLU in a compiled chain, microseconds per further ReLU (shape)")
    for shape in dict.fromkeys([(1, 64), (1, 256, 56, 56), (args.batch, 256, 56, 56)]):
        print(f"{shape}: {chained_relu(shape):.0f}")
    print(f"\nRN50 3x3 convolutions at batch {args.batch}, ms (channels, size)")
    for shape in CONV_SHAPES:
        figures = convolutions(args.batch, *shape)
        print(f"{shape}: " + ", ".join(f"{name} {value:.1f}" for name, value in figures.items()))
    print(f"\nRN50 1x1 convolutions at batch {args.batch}, ms (in, out, size)")
    for shape in POINTWISE_SHAPES:
        figures = pointwise(args.batch, *shape)
        print(f"{shape}: " + ", ".join(f"{name} {value:.1f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
