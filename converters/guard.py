"""The input guard: an out-of-distribution check fitted on the calibration (or training) images alone and added to
the model's own graph as an output, so that one inference gives the scores, the heatmap and the guard on ONNX
Runtime, TensorRT and Triton alike.

Two components, each a score with a threshold (an image above either is outside what the model reads):

- "density": how unlike the fitting images an image is, summed over several views of it. Each view is a vector
  with a Gaussian fitted to the fitting images (Ledoit-Wolf shrunk covariance); its score is the log of the squared
  Mahalanobis distance over its median. The views: the model's own activations, globally averaged, at its first,
  middle and last spatial layers (the last is what the classifier head reads, where it is found); the image at 8x8
  after per-image normalisation (its layout); and the sorted values of the normalised image at 8x8 (its
  histogram's shape, whatever the layout).
- "orientation": a logistic regression on the normalised 16x16 image that tells the fitting images from the same
  images turned 90, 180 and 270 degrees and with their grey levels inverted: the ways a real image of the right
  kind reaches the box wrong (a rotated cassette, a MONOCHROME1 image shown as MONOCHROME2).

Thresholds are the 99th percentile of each score over the fitting images, each scored by a guard fitted without
it (five folds). Why written here: no library fits a detector into an ONNX graph; the statistics are scikit-learn's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from converters.errors import ModelError
from edge_app.bundles.manifest import GUARD_PREFIX, GuardComponent, InputGuard, InputSpec, OutputSpec, Preprocessing

log = logging.getLogger(__name__)
OUTPUT = "input_guard"
PREFIX = GUARD_PREFIX  # every node and initializer the guard adds: kept in FP32 by the precision conversions
QUANTILE = 0.99
FOLDS = 5
_ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "HardSwish", "Sigmoid", "Elu", "Selu", "PRelu", "Mish", "Gelu", "Swish"}
Array = NDArray[np.float64]


@dataclass(frozen=True)
class _Gaussian:
    mean: Array
    root: Array  # (d, d): the precision matrix is root @ root.T
    log_median: float

    def score(self, x: Array) -> Array:
        d2 = np.square((x - self.mean) @ self.root).sum(axis=1)
        return np.asarray(np.log(d2 + 1e-12) - self.log_median)


def feature_layers(model: Any, output: OutputSpec) -> list[tuple[str, str]]:
    """Up to three spatial activations of the model, as (tensor, layout): its first, middle and last 2-D
    convolutions' outputs (after their activation where one follows alone), the last being the feature map the
    classifier head reads where that is found. A convolution's output is NCHW whatever the model's input layout."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = _inits(model)
    spatial: list[tuple[str, str]] = []
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 4:
            continue
        tensor = node.output[0]
        after = consumers.get(tensor, [])
        if len(after) == 1 and after[0].op_type in _ACTIVATIONS:
            tensor = after[0].output[0]
        spatial.append((tensor, "NCHW"))
    head = head_features(model, output)
    if head is not None:
        producers = {out: node for node in model.graph.node for out in node.output}
        source = producers.get(head[0])  # an NHWC head reads the last activation through a Transpose
        same = {head[0], source.input[0]} if source is not None and source.op_type == "Transpose" else {head[0]}
        cut = next((i for i, (name, _) in enumerate(spatial) if name in same), len(spatial))
        spatial = [*spatial[:cut], head]
    if len(spatial) <= 3:
        return spatial
    return [spatial[0], spatial[(len(spatial) - 1) // 2], spatial[-1]]


def head_features(model: Any, output: OutputSpec) -> tuple[str, str] | None:
    """The feature map the classifier head pools, as (tensor, layout): walk back from the scores through the head
    (activation, Add, Gemm/MatMul, Relu, Flatten/Reshape/Squeeze...) to a global average pool or a mean over the
    spatial axes; past a 1x1 convolution that maps features to labels before the pooling (a CAM-style head)."""
    from converters.graph import mean_over_hw

    producers = {out: node for node in model.graph.node for out in node.output}
    constant = {i.name for i in model.graph.initializer} | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }
    tensor = output.name
    for _ in range(16):
        node = producers.get(tensor)
        if node is None:
            return None
        if node.op_type == "GlobalAveragePool" or (layout := mean_over_hw(node, _inits(model))) is not None:
            pooled = node.input[0]
            layout = "NCHW" if node.op_type == "GlobalAveragePool" else layout
            conv = producers.get(pooled)
            if conv is not None and conv.op_type == "Conv" and layout == "NCHW" and _is_1x1(model, conv):
                return conv.input[0], "NCHW"
            return pooled, str(layout)
        data = [i for i in node.input if i and i not in constant]
        if len(data) != 1:
            return None
        tensor = data[0]
    return None


def fit(
    model: Any,
    spec: InputSpec,
    prep: Preprocessing,
    output: OutputSpec,
    images: NDArray[np.generic],
    held_out: NDArray[np.generic] | None = None,
    seed: int = 0,
) -> tuple[Any, InputGuard]:
    """Fit the guard on `images` (preprocessed, (N, ...) as the model takes them) and add it to `model` (in place)
    as the output `input_guard`; measure its refusal rates on `held_out` (real images of the right kind, never used
    to fit) and on synthetic images made from them. Returns the model and the manifest's `guard`."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    if len(images) < 4 * FOLDS:
        raise ModelError(f"the input guard needs at least {4 * FOLDS} images to fit; {len(images)} given")
    strip(model)  # a guard already there (a bundle's model converted again) is fitted anew
    layers = feature_layers(model, output)
    view_tensors = _with_views(model, spec, layers)
    views = _views(model, view_tensors, spec, images)
    usable = np.all([np.isfinite(v).all(axis=1) for v in views.values()], axis=0)  # a constant image has no layout
    if usable.sum() < 4 * FOLDS:
        raise ModelError(
            f"the input guard needs at least {4 * FOLDS} images to fit; {int(usable.sum())} of {len(images)} are "
            "usable (a constant image, all black or all white, is not)"
        )
    images = images[usable]
    views = {name: v[usable] for name, v in views.items()}
    names = [name for name in views if name != "image_16"]  # the 16x16 image is the orientation's view
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(len(images)), FOLDS)

    def gaussian(x: Array) -> _Gaussian:
        lw = LedoitWolf().fit(x)
        root = np.linalg.cholesky(lw.precision_)
        d2 = np.square((x - lw.location_) @ root).sum(axis=1)
        return _Gaussian(lw.location_, root, float(np.log(np.median(d2) + 1e-12)))

    density_cv = np.zeros(len(images))
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(images)), fold)
        for name in names:
            part = gaussian(views[name][rest])
            density_cv[fold] += part.score(views[name][fold])
    gaussians = {name: gaussian(views[name]) for name in names}
    # The median of each view's own scores is 0 by construction; the cross-validated sum says where the real
    # images of the fitting set lie.

    turned = _variants(images, spec, prep)
    flat16 = views["image_16"]
    turned16 = _views(model, {"image_16": view_tensors["image_16"]}, spec, turned)["image_16"]
    n_variants = len(turned16) // len(images)
    x_all = np.concatenate([flat16, turned16])
    y_all = np.r_[np.zeros(len(flat16)), np.ones(len(turned16))]
    owner = np.r_[np.arange(len(images)), np.tile(np.arange(len(images)), n_variants)]
    orientation_cv = np.zeros(len(images))
    for fold in folds:
        train = ~np.isin(owner, fold)
        clf = LogisticRegression(C=0.1, max_iter=5000).fit(x_all[train], y_all[train])
        orientation_cv[fold] = clf.decision_function(flat16[fold])
    clf = LogisticRegression(C=0.1, max_iter=5000).fit(x_all, y_all)

    thresholds = (float(np.quantile(density_cv, QUANTILE)), float(np.quantile(orientation_cv, QUANTILE)))
    _with_guard(model, view_tensors, gaussians, clf)
    components = (
        GuardComponent(
            name="density",
            method="sum over views (model activations pooled at "
            + ", ".join(f"{t} ({lay})" for t, lay in layers)
            + "; the normalised image at 8x8; its sorted values at 8x8) of the log squared Mahalanobis distance "
            "to the fitting images (Ledoit-Wolf), each over its median",
            threshold=round(thresholds[0], 6),
        ),
        GuardComponent(
            name="orientation",
            method="logistic regression on the normalised image at 16x16: the fitting images against the same "
            "turned 90/180/270 degrees and inverted",
            threshold=round(thresholds[1], 6),
        ),
    )
    refused_cv = float(np.mean((density_cv > thresholds[0]) | (orientation_cv > thresholds[1])))
    rates: dict[str, Any] = {"fitting_images_refused_cv": round(refused_cv, 4)}
    if not usable.all():
        rates["fitting_images_left_out"] = int((~usable).sum())
    if held_out is not None and len(held_out):
        rates.update(_measure(model, spec, prep, held_out, thresholds))
    guard = InputGuard(
        output=OUTPUT,
        components=components,
        fitted_on=f"{len(images)} images ({FOLDS}-fold cross-validated thresholds at the {QUANTILE:.0%} point)",
        rates=rates,
    )
    return model, guard


def scores(model: Any, spec: InputSpec, x: NDArray[np.generic]) -> NDArray[np.float32]:
    """The guard output of a guarded model on a batch (tests, rates)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = [session.run([OUTPUT], {spec.name: x[i : i + 64]})[0] for i in range(0, len(x), 64)]
    return np.concatenate(out).astype(np.float32)


def outside(values: NDArray[np.float32], thresholds: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Per image, whether any score is above its threshold or not a number (the service's rule)."""
    return np.asarray(~(values <= thresholds).all(axis=1))


def _measure(
    model: Any, spec: InputSpec, prep: Preprocessing, held_out: NDArray[np.generic], thresholds: tuple[float, float]
) -> dict[str, Any]:
    """Share refused of real held-out images, and of synthetic images made from them and from nothing."""
    limit = np.asarray(thresholds, np.float32)
    refused = {
        kind: round(float(np.mean(outside(scores(model, spec, x), limit))), 4)
        for kind, x in probes(held_out, spec, prep).items()
    }
    held = refused.pop("held_out")
    return {"held_out_images": len(held_out), "held_out_refused": held, "synthetic_refused": refused}


def probes(held_out: NDArray[np.generic], spec: InputSpec, prep: Preprocessing) -> dict[str, NDArray[np.generic]]:
    """What the guard's rates are measured on: real held-out images, and synthetic ones (at most 64 of each kind)
    made from them (turned or inverted) and from nothing (uniform noise, blank images from black to white)."""
    rng = np.random.default_rng(1)
    n = min(len(held_out), 64)
    shape = (n, *spec.image_shape)
    lo, hi = _tensor_range(prep)
    noise = (lo + (hi - lo) * rng.uniform(0.0, 1.0, shape)).astype(held_out.dtype)
    blank = np.stack([np.full(shape[1:], lo + (hi - lo) * v) for v in np.linspace(0, 1, n)]).astype(held_out.dtype)
    return {
        "held_out": held_out,
        "turned_or_inverted": _variants(held_out[:n], spec, prep),
        "uniform_noise": noise,
        "blank": blank,
    }


@dataclass(frozen=True)
class Probe:
    """The FP32 model's guard verdicts on the probe images, against which a converted model's guard is checked
    (its FP32 nodes read FP16 or INT8 features)."""

    images: dict[str, NDArray[np.generic]]
    expected: dict[str, NDArray[np.bool_]]
    limits: NDArray[np.float32]

    @classmethod
    def of(
        cls, model: Any, spec: InputSpec, prep: Preprocessing, held_out: NDArray[np.generic], guard: InputGuard
    ) -> Probe:
        images = probes(held_out, spec, prep)
        limits = np.asarray([c.threshold for c in guard.components], np.float32)
        return cls(images, {k: outside(scores(model, spec, x), limits) for k, x in images.items()}, limits)

    def compare(self, candidate: Any, spec: InputSpec) -> dict[str, Any]:
        """How often the candidate's guard says what the FP32 one says, and each kind's refused share in both."""
        got = {k: outside(scores(candidate, spec, x), self.limits) for k, x in self.images.items()}
        same = np.concatenate([got[k] == self.expected[k] for k in got])
        return {
            "agreement": round(float(same.mean()), 4),
            "images": int(same.size),
            "refused": {
                k: {"fp32": round(float(self.expected[k].mean()), 4), "candidate": round(float(got[k].mean()), 4)}
                for k in got
            },
        }


def _tensor_range(prep: Preprocessing) -> tuple[float, float]:
    """The input values of black and white (before mean/std, which `_variants` and the rates ignore for noise)."""
    return float(prep.scale[0]), float(prep.scale[1])


def _variants(x: NDArray[np.generic], spec: InputSpec, prep: Preprocessing) -> NDArray[np.generic]:
    """The images turned 90, 180 and 270 degrees (180 only where the input is not square) and inverted."""
    h, w = (2, 3) if spec.layout == "NCHW" else (1, 2)
    turns = (1, 2, 3) if spec.height == spec.width else (2,)
    out = [np.rot90(x, k, axes=(h, w)) for k in turns]
    out.append(_inverted(x, spec, prep))
    return np.ascontiguousarray(np.concatenate(out))


def _inverted(x: NDArray[np.generic], spec: InputSpec, prep: Preprocessing) -> NDArray[np.generic]:
    """Grey levels inverted in the input's own terms: v = a + (b - a) p becomes a + b - v, then mean/std."""
    a, b = prep.scale
    v = np.asarray(x, np.float64)
    if prep.mean is not None and prep.std is not None:
        shape = (1, -1, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, -1)
        mean = np.asarray(prep.mean, np.float64).reshape(shape)
        std = np.asarray(prep.std, np.float64).reshape(shape)
        return np.asarray(((a + b - (v * std + mean)) - mean) / std, dtype=x.dtype)
    return np.asarray(a + b - v, dtype=x.dtype)


def _is_1x1(model: Any, conv: Any) -> bool:
    from onnx import numpy_helper

    inits = _inits(model)
    weight = inits.get(conv.input[1])
    return weight is not None and tuple(numpy_helper.to_array(weight).shape[2:]) == (1, 1)


def _inits(model: Any) -> dict[str, Any]:
    return {i.name: i for i in model.graph.initializer}


def _copy(model: Any) -> Any:
    from converters.graph import copy

    return copy(model)


def _views(model: Any, views: dict[str, str], spec: InputSpec, x: NDArray[np.generic]) -> dict[str, Array]:
    """Every view of the images: `model` (holding the view tensors) run with those tensors as outputs."""
    import onnx
    import onnxruntime as ort

    probe = _copy(model)
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in views.values()
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = list(views.values())
    parts: dict[str, list[NDArray[Any]]] = {t: [] for t in tensors}
    for i in range(0, len(x), 32):
        for tensor, value in zip(tensors, session.run(tensors, {spec.name: x[i : i + 32]}), strict=True):
            parts[tensor].append(np.asarray(value, np.float64))
    return {name: np.concatenate(parts[tensor]) for name, tensor in views.items()}


class _Nodes:
    """Adds named nodes and constants (all under `PREFIX`) to a graph."""

    def __init__(self, model: Any) -> None:
        self.graph = model.graph
        self.count = len(model.graph.node)  # names stay unique however many times a graph is added to

    def const(self, name: str, value: NDArray[Any]) -> str:
        from onnx import numpy_helper

        full = f"{PREFIX}{name}"
        self.graph.initializer.append(numpy_helper.from_array(value, full))
        return full

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> str:
        """A node; its (first) output's name."""
        from onnx import helper

        self.count += 1
        out = f"{PREFIX}{op_type.lower()}_{self.count}"
        names = [out] + [f"{out}_{i}" for i in range(1, outputs)]
        self.graph.node.append(helper.make_node(op_type, inputs, names, name=out, **attrs))
        return out

    def output(self, columns: list[str], name: str) -> None:
        """A graph output `name`, (N, columns), the (N, 1) tensors side by side."""
        from onnx import TensorProto, helper

        self.graph.node.append(helper.make_node("Concat", columns, [name], name=f"{PREFIX}{name}", axis=1))
        self.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", len(columns)]))


def _with_views(model: Any, spec: InputSpec, layers: list[tuple[str, str]]) -> dict[str, str]:
    """Add the views' tensors (float32, (N, d)) to `model`; return them by view name. Few nodes: ONNX Runtime
    spends about a microsecond per node and image whatever the node does, most of a small guard's time."""
    from onnx import TensorProto

    from converters.graph import opset_of

    g = _Nodes(model)
    float32 = spec.dtype == "float32"
    types = _elem_types(model)  # a model may compute in FP16 inside, its inputs and outputs FP32
    views: dict[str, str] = {}
    for i, (tensor, layout) in enumerate(layers):
        x = tensor if types.get(tensor) == TensorProto.FLOAT else g.op("Cast", [tensor], to=TensorProto.FLOAT)
        axes = [2, 3] if layout == "NCHW" else [1, 2]
        if opset_of(model) >= 18:  # ReduceMean's axes became an input in opset 18
            views[f"layer{i}"] = g.op("ReduceMean", [x, g.const(f"axes{i}", np.asarray(axes, np.int64))], keepdims=0)
        else:
            views[f"layer{i}"] = g.op("ReduceMean", [x], axes=axes, keepdims=0)
    image = spec.name if float32 else g.op("Cast", [spec.name], to=TensorProto.FLOAT)
    if spec.layout == "NHWC":
        image = g.op("Transpose", [image], perm=[0, 3, 1, 2])
    kh, kw = max(1, spec.height // 16), max(1, spec.width // 16)
    # Each image to zero mean and unit variance over its own values: its layout, whatever its brightness and
    # contrast (a constant image gives NaN, which the service reads as outside).
    grid = g.op(
        "MeanVarianceNormalization",
        [g.op("AveragePool", [image], kernel_shape=[kh, kw], strides=[kh, kw])],
        axes=[1, 2, 3],
    )
    views["image_16"] = g.op("Flatten", [grid], axis=1)
    views["image_8"] = g.op("Flatten", [g.op("AveragePool", [grid], kernel_shape=[2, 2], strides=[2, 2])], axis=1)
    k = g.const("sort_k", np.asarray([spec.channels * (spec.height // kh // 2) * (spec.width // kw // 2)], np.int64))
    views["sorted_8"] = g.op("TopK", [views["image_8"], k], outputs=2, axis=1, largest=1, sorted=1)
    return views


def _with_guard(model: Any, views: dict[str, str], gaussians: dict[str, _Gaussian], clf: Any) -> None:
    """Add the guard output (N, 2): the density score and the orientation score."""
    g = _Nodes(model)
    names = list(gaussians)
    # Per view, (x - mean) @ root as one Gemm, x @ root - mean @ root: ONNX Runtime runs each node for about a
    # microsecond whatever it does, and one block-diagonal matrix for all views would be read whole for each image.
    projected = [
        g.op(
            "Gemm",
            [
                views[n],
                g.const(f"{n}_root", gaussians[n].root.astype(np.float32)),
                g.const(f"{n}_shift", (-gaussians[n].mean @ gaussians[n].root).astype(np.float32)),
            ],
        )
        for n in names
    ]
    sizes = [len(gaussians[n].mean) for n in names]
    member = np.zeros((sum(sizes), len(names)), np.float32)  # which view each column belongs to
    member[np.arange(sum(sizes)), np.repeat(np.arange(len(names)), sizes)] = 1.0
    joined = g.op("Concat", projected, axis=1)
    tiny = g.const("tiny", np.full(len(names), 1e-12, np.float32))
    d2 = g.op("Gemm", [g.op("Mul", [joined, joined]), g.const("member", member), tiny])  # per view, + 1e-12
    # Each view's log over its median: the medians' logs summed into one constant.
    offset = g.const("log_median", np.asarray([sum(gaussians[n].log_median for n in names)], np.float32))
    logs = g.op("ReduceSum", [g.op("Log", [d2]), g.const("sum_axes", np.asarray([1], np.int64))], keepdims=1)
    total = g.op("Sub", [logs, offset])
    weights = g.const("orientation_w", clf.coef_.reshape(-1, 1).astype(np.float32))
    bias = g.const("orientation_b", clf.intercept_.reshape(1).astype(np.float32))
    # One Gemm, not MatMul + Add: ONNX Runtime's optimizer would fuse those under a new name, which the INT8
    # quantizer would then no longer know as the guard's.
    orientation = g.op("Gemm", [views["image_16"], weights, bias])
    g.output([total, orientation], OUTPUT)


def strip(model: Any) -> Any:
    """The model without its guard (in place): the guard's output, its nodes and constants, and what only they
    used (the Cast nodes an FP16 conversion put around them)."""
    outputs = [o for o in model.graph.output if o.name != OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    nodes = [n for n in model.graph.node if not n.name.startswith(PREFIX) and OUTPUT not in n.output]
    while True:  # nodes whose outputs nothing reads and that are no graph output: the guard's leftovers
        wanted = {o.name for o in model.graph.output} | {i for n in nodes for i in n.input}
        alive = [n for n in nodes if any(out in wanted for out in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input} | {i.name for i in model.graph.input}
    inits = [i for i in model.graph.initializer if i.name in used and not i.name.startswith(PREFIX)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def _elem_types(model: Any) -> dict[str, int]:
    """Each tensor's element type, as shape inference finds it."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot read: every tensor cast (one node each, harmless)
        return {}
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def guard_nodes(model: Any) -> list[str]:
    """The names of the guard's nodes: the precision conversions keep them in FP32."""
    return [n.name for n in model.graph.node if n.name.startswith(PREFIX)]
