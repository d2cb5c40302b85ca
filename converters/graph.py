"""ONNX graph work: load (external data included), check, infer shapes, make the batch dynamic, simplify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from converters.errors import ModelError
from edge_app.bundles.manifest import InputSpec

MIN_OPSET = 13
BATCH = "batch"


def load_model(path: Path) -> Any:
    """Read an ONNX file and any external-data files beside it into one in-memory model."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror}: {exc.filename})") from None
    except Exception as exc:  # protobuf DecodeError, onnx's own errors
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def opset_of(model: Any) -> int:
    """The model's ONNX opset (0 where it imports none of the default domain)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check(model: Any) -> Any:
    """ONNX checker and strict shape inference; refuse opsets older than 13."""
    import onnx

    if (opset := opset_of(model)) < MIN_OPSET:
        raise ModelError(f"the model uses opset {opset}; export it with opset {MIN_OPSET} or later")
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"the ONNX checker refuses the model: {exc}") from None


def graph_inputs(model: Any) -> list[Any]:
    """Real inputs (not initializers listed as inputs, as old exporters did)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def check_input(model: Any, spec: InputSpec) -> None:
    """The model has exactly the input the spec declares, with matching shape."""
    inputs = {i.name: i for i in graph_inputs(model)}
    if spec.name not in inputs:
        raise ModelError(f"the model has no input {spec.name!r}; its inputs are {', '.join(inputs) or 'none'}")
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}); one image input is supported")
    dims = inputs[spec.name].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    expected = list(spec.image_shape)
    if len(shape) != 4 or any(s is not None and s != e for s, e in zip(shape[1:], expected, strict=True)):
        raise ModelError(f"input {spec.name!r} has shape {shape}; the spec ({spec.layout}) implies [N, {expected}]")


def make_batch_dynamic(model: Any) -> Any:
    """Name the first dimension of every input and output `batch`."""
    for value in [*graph_inputs(model), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH
    return model


def simplify(model: Any) -> Any:
    """Constant folding and redundant-node removal with onnxslim; then every node named."""
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception as exc:
        raise ModelError(f"onnxslim could not simplify the model: {exc}") from None
    return _name_nodes(slim)


def _name_nodes(model: Any) -> Any:
    """A name of its own for every node: the INT8 fallback keeps nodes in FP32 by name, and ONNX Runtime's
    quantizer, told to keep a name, keeps every node of that name (told "", every unnamed node). An unnamed node
    is named after its op (`Conv_3`); a name already taken gets a suffix."""
    taken = {node.name for node in model.graph.node}
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = node.name or f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
        seen.add(node.name)
    return model


def verify_batches(model_path: Path, spec: InputSpec, batches: tuple[int, ...] = (1, 3)) -> None:
    """Run the saved model at several batch sizes; a graph that hard-codes its batch fails here, plainly."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for n in batches:
        x = np.zeros((n, *spec.image_shape), dtype=np.dtype(spec.dtype))
        try:
            outputs = session.run(None, {spec.name: x})
        except Exception as exc:
            raise ModelError(f"the model does not run at batch {n} (a batch size fixed in the graph?): {exc}") from None
        if any(np.asarray(o).shape[:1] != (n,) for o in outputs):
            raise ModelError(f"at batch {n} the model's outputs do not have batch {n} as their first dimension")


def save(model: Any, path: Path) -> None:
    """Write the model as one self-contained file, with the lowest IR version its opsets allow.

    A newer onnx stamps its own IR version, which an older ONNX Runtime refuses (JetPack 6's Python 3.10 gets
    onnxruntime 1.23, IR 11 at most); the opsets, not the writer, say what the graph needs."""
    import onnx

    if model.ByteSize() > 2**31 - 1:
        raise ModelError("models over 2 GB are not supported on the appliance")
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = min(model.ir_version, max(needed, 7))
    onnx.save(model, str(path))


def copy(model: Any) -> Any:
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def add_cam(model: Any, score_output: str, name: str = "cam") -> tuple[Any, str | None]:
    """Where the scores come from global-average-pool + linear, add the class activation map as an output.

    The linear layer applied at every location of the pooled feature map (a 1x1 convolution with the same weights
    and bias) gives a (N, labels, h, w) map whose spatial mean is exactly the score: the heatmap costs no second
    inference. Recognised: GlobalAveragePool, or ReduceMean over H and W of NCHW (axes 2, 3) or of NHWC (axes
    1, 2, as Keras and tf2onnx write it), its axes an attribute or (opset 18) an input; then Flatten, Reshape or
    Squeeze (or nothing, where the mean keeps no dims) -> Gemm, or -> MatMul [-> Add], optionally followed by
    the output's activation. Returns the model and the map's name, or None.
    """
    import onnx
    from onnx import helper, numpy_helper

    nodes = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}

    def producer(tensor: str) -> Any:
        return nodes.get(tensor)

    node = producer(score_output)
    activation = node.op_type if node is not None and node.op_type in ("Sigmoid", "Softmax") else None
    if activation is not None:
        node = producer(node.input[0])
    raw = f"{name}_raw" if activation else name  # the map in the score's units, before the graph's activation
    dense = _dense(node, nodes, inits)
    if dense is None:
        return model, None
    weight, bias, node = dense
    pooled = _pooled(node.input[0], nodes, inits)
    if pooled is None:
        return model, None
    features, layout = pooled
    labels, channels = weight.shape
    w_name, b_name = f"{name}_weight", f"{name}_bias"
    bias_values = bias
    if layout == "NCHW":  # the linear layer as a 1x1 convolution: (N, labels, h, w)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(weight.reshape(labels, channels, 1, 1), w_name),
                numpy_helper.from_array(bias_values, b_name),
            ]
        )
        model.graph.node.append(helper.make_node("Conv", [features, w_name, b_name], [raw], name=f"{name}_head"))
    else:  # NHWC: the linear layer at every location, (N, h, w, labels), then to (N, labels, h, w)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(weight.T), w_name),
                numpy_helper.from_array(bias_values, b_name),
            ]
        )
        model.graph.node.extend(
            [
                helper.make_node("MatMul", [features, w_name], [f"{name}_hwl"], name=f"{name}_head"),
                helper.make_node("Add", [f"{name}_hwl", b_name], [f"{name}_hwlb"], name=f"{name}_bias_add"),
                helper.make_node("Transpose", [f"{name}_hwlb"], [raw], name=f"{name}_nchw", perm=[0, 3, 1, 2]),
            ]
        )
    _activate(model, raw, name, activation)
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, name


def _dense(
    node: Any, nodes: dict[str, Any], inits: dict[str, Any]
) -> tuple[NDArray[np.float32], NDArray[np.float32], Any] | None:
    """A linear layer ending at `node`: Gemm, or MatMul [-> Add], with constant weights. Returns its weight
    (outputs, inputs), its bias (zeros where it has none) and its Gemm/MatMul node, or None."""
    from onnx import helper, numpy_helper

    bias = None
    if node is not None and node.op_type == "Add":
        const = [i for i in node.input if i in inits]
        other = [i for i in node.input if i not in inits]
        if len(const) != 1 or len(other) != 1:
            return None
        bias = numpy_helper.to_array(inits[const[0]])
        node = nodes.get(other[0])
    if node is None or node.op_type not in ("Gemm", "MatMul") or node.input[1] not in inits:
        return None
    weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        weight = weight if attrs.get("transB", 0) else weight.T  # (outputs, inputs)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                return None
            bias = numpy_helper.to_array(inits[node.input[2]])
    else:
        weight = weight.T
    outputs = weight.shape[0]
    if bias is not None and bias.size != outputs:
        return None
    values = np.zeros(outputs, np.float32) if bias is None else bias.reshape(outputs).astype(np.float32)
    return np.ascontiguousarray(weight), values, node


def _pooled(tensor: str, nodes: dict[str, Any], inits: dict[str, Any]) -> tuple[str, str] | None:
    """The feature map a global average pool reads, and its layout, where `tensor` is that pool's output
    (through Flatten, Reshape or Squeeze)."""
    pool = nodes.get(tensor)
    if pool is not None and pool.op_type in ("Flatten", "Reshape", "Squeeze"):
        pool = nodes.get(pool.input[0])
    layout = None if pool is None else "NCHW" if pool.op_type == "GlobalAveragePool" else mean_over_hw(pool, inits)
    return None if pool is None or layout is None else (pool.input[0], layout)


def add_gradcam(model: Any, score_output: str, name: str = "cam") -> tuple[Any, str | None]:
    """Where the scores come from global-average-pool -> dense -> ReLU -> dense (a Keras head), add Grad-CAM as an
    output, computed in the graph: the gradient of each score with respect to the pooled features (the second
    layer's weights through the first layer's active units, W1 diag(z > 0) W2: a few nodes for such a head) weighs
    the feature map at every location, plus the constant that makes the map's spatial mean the score exactly. Like
    the class activation map, (N, labels, h, w) in the score's units, from the same inference. Returns the model
    and the map's name, or None where the head is not of this form."""
    import onnx
    from onnx import helper, numpy_helper

    nodes = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}
    top: Any = nodes.get(score_output)
    activation = top.op_type if top is not None and top.op_type in ("Sigmoid", "Softmax") else None
    if activation is not None:
        top = nodes.get(top.input[0])
    raw = f"{name}_raw" if activation else name
    second = _dense(top, nodes, inits)
    relu = nodes.get(second[2].input[0]) if second is not None else None
    if second is None or top is None or relu is None or relu.op_type != "Relu":
        return model, None
    first = _dense(nodes.get(relu.input[0]), nodes, inits)
    pooled = _pooled(first[2].input[0], nodes, inits) if first is not None else None
    if first is None or pooled is None:
        return model, None
    (w2, _, _), (w1, _, _), (features, layout) = second, first, pooled
    scores, z, p = top.output[0], relu.input[0], first[2].input[0]  # (N, L) before activation, (N, H), (N, C)
    labels, channels = w2.shape[0], w1.shape[1]
    consts = {
        f"{name}_w1": w1.T.astype(np.float32),  # (C, H)
        f"{name}_w2": w2.T.astype(np.float32),  # (H, L)
        f"{name}_ax1": np.asarray([1], np.int64),
        f"{name}_ax2": np.asarray([2], np.int64),
        f"{name}_flat_shape": np.asarray([0, channels, -1] if layout == "NCHW" else [0, -1, channels], np.int64),
        f"{name}_hw_from": np.asarray([2] if layout == "NCHW" else [1], np.int64),
        f"{name}_hw_to": np.asarray([4] if layout == "NCHW" else [3], np.int64),
        f"{name}_nl": np.asarray([0, labels], np.int64),
        f"{name}_zero": np.asarray(0.0, np.float32),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())

    def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> str:
        model.graph.node.append(helper.make_node(kind, inputs, [f"{name}_{out}"], name=f"{name}_{out}", **attrs))
        return f"{name}_{out}"

    active = op("Cast", [op("Greater", [z, f"{name}_zero"], "active_bool")], "active", to=onnx.TensorProto.FLOAT)
    routed = op("Mul", [op("Unsqueeze", [active, f"{name}_ax2"], "active_nh1"), f"{name}_w2"], "routed")  # (N,H,L)
    grad = op("MatMul", [f"{name}_w1", routed], "grad")  # (N, C, L): d score / d pooled feature
    flat = op("Reshape", [features, f"{name}_flat_shape"], "flat")
    at = op("Transpose", [flat], "at", perm=[0, 2, 1]) if layout == "NCHW" else flat  # (N, HW, C)
    local = op("Transpose", [op("MatMul", [at, grad], "local_hwl")], "local", perm=[0, 2, 1])  # (N, L, HW)
    through = op("MatMul", [op("Unsqueeze", [p, f"{name}_ax1"], "p_1c"), grad], "through")  # (N, 1, L)
    offset = op("Sub", [op("Unsqueeze", [scores, f"{name}_ax1"], "s_1l"), through], "offset")  # mean = score
    shifted = op("Add", [local, op("Transpose", [offset], "offset_l1", perm=[0, 2, 1])], "shifted")
    hw = op("Slice", [op("Shape", [features], "shape"), f"{name}_hw_from", f"{name}_hw_to"], "hw")
    model.graph.node.append(
        helper.make_node(
            "Reshape", [shifted, op("Concat", [f"{name}_nl", hw], "nlhw", axis=0)], [raw], name=f"{name}_map"
        )
    )
    _activate(model, raw, name, activation)
    shape = ["batch", labels, f"{name}_h", f"{name}_w"]
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    return model, name


def _activate(model: Any, raw: str, name: str, activation: str | None) -> None:
    """Where the graph puts its scores through Sigmoid or Softmax, the map goes through the same (Softmax across the
    labels at each location): the map is then in the output's units, whatever the manifest's activation says."""
    from onnx import helper

    if activation is not None:
        attrs: dict[str, Any] = {"axis": 1} if activation == "Softmax" else {}
        model.graph.node.append(helper.make_node(activation, [raw], [name], name=f"{name}_activation", **attrs))


def mean_over_hw(node: Any, inits: dict[str, Any]) -> str | None:
    """ "NCHW" or "NHWC" where `node` is a ReduceMean over a 4-D tensor's spatial axes, else None."""
    from onnx import helper, numpy_helper

    if node.op_type != "ReduceMean":
        return None
    axes = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1] in inits:  # opset 18: the axes are an input
        axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
    if axes is None:
        return None
    axes = sorted(int(a) % 4 for a in axes)
    return {(2, 3): "NCHW", (1, 2): "NHWC"}.get(tuple(axes))
