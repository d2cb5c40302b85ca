"""Clean a graph before it is quantized: per-channel scale and shift chains folded into the convolution before
them, and Transpose pairs that undo each other removed.

Exporters write BatchNorm in ways no tool here folds: Keras on the torch backend, through torch.onnx, writes it
as `Conv -> Sub(mean) -> Mul(scale) -> Add(beta)` with [1, C, 1, 1] constants, and wraps every Conv in an
NHWC/NCHW Transpose pair. Neither onnxslim nor ONNX Runtime's optimizer folds those chains, and quantizing them
as separate tensors costs most of INT8's accuracy on such models (a Keras-style depthwise model: decision
agreement 0.75 as exported, 0.91-0.94 folded). Written here because no library we use does it: onnxslim and
ONNX Runtime fuse only `BatchNormalization` nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


def _per_channel(value: np.ndarray, channels: int, rank: int, axis: int) -> np.ndarray | None:
    """`value` as one number per channel, where it broadcasts against a tensor of `rank` dimensions whose
    channels are on `axis` (1 right after a Conv; the last after a Transpose to NHWC): one value, or `channels`
    values on that axis and 1 on every other."""
    if value.ndim > rank:
        return None
    shape = [1] * (rank - value.ndim) + list(value.shape)
    if all(d == 1 for d in shape):
        return np.full(channels, float(value.reshape(-1)[0]), np.float64)
    if shape[axis] == channels and all(d == 1 for i, d in enumerate(shape) if i != axis):
        return value.reshape(channels).astype(np.float64)
    return None


def fold_scale_shift(model: Any) -> tuple[Any, int]:
    """Fold every chain of Add/Sub/Mul/Div by per-channel constants that follows a Conv (whose output nothing
    else reads) into that Conv's weights and bias. Returns the model and how many nodes were folded away."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    folded = 0
    changed = True
    while changed:
        changed = False
        readers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        for conv in graph.node:
            if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
                continue
            out = conv.output[0]
            after = readers.get(out, [])
            if len(after) != 1 or out in graph_outputs:
                continue
            weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            channels, axis, between = weight.shape[0], 1, None
            if after[0].op_type == "Transpose":  # Keras on torch: Conv, Transpose to NHWC, then the scale/shift
                perm = next((list(a.ints) for a in after[0].attribute if a.name == "perm"), None)
                out = after[0].output[0]
                if perm is None or len(perm) != weight.ndim or out in graph_outputs:
                    continue
                between, axis, after = after[0], perm.index(1), readers.get(out, [])
                if len(after) != 1:
                    continue
            op = after[0]
            if op.op_type not in _ELEMENTWISE:
                continue
            const_name = op.input[1] if op.input[0] == out else op.input[0]
            if const_name not in inits or out not in op.input[:2]:
                continue
            c = _per_channel(numpy_helper.to_array(inits[const_name]), channels, weight.ndim, axis)
            if c is None or (op.op_type == "Div" and (op.input[0] != out or np.any(c == 0))):
                continue
            bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
            if bias_name is not None and bias_name not in inits:
                continue
            bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else np.zeros(channels)
            scale = c.reshape(-1, *([1] * (weight.ndim - 1)))
            if op.op_type == "Mul":
                weight, bias = weight * scale, bias * c
            elif op.op_type == "Div":
                weight, bias = weight / scale, bias / c
            elif op.op_type == "Add":
                bias = bias + c
            elif op.input[0] == out:  # Sub: conv - c
                bias = bias - c
            else:  # Sub: c - conv
                weight, bias = -weight, c - bias
            dtype = numpy_helper.to_array(inits[conv.input[1]]).dtype
            new_w = numpy_helper.from_array(weight.astype(dtype), f"{conv.name or out}_folded_w{folded}")
            new_b = numpy_helper.from_array(bias.astype(dtype), f"{conv.name or out}_folded_b{folded}")
            graph.initializer.extend([new_w, new_b])
            inits[new_w.name], inits[new_b.name] = new_w, new_b
            conv.input[:] = [conv.input[0], new_w.name, new_b.name]
            # The Conv (or the Transpose after it) now gives what the elementwise node gave.
            (between or conv).output[0] = op.output[0]
            graph.node.remove(op)
            folded += 1
            changed = True
            break
    _drop_unused(model)
    return model, folded


def cancel_transposes(model: Any) -> tuple[Any, int]:
    """Remove Transpose pairs whose permutations undo each other (the first read only by the second)."""
    from onnx import helper

    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    removed = 0
    changed = True
    while changed:
        changed = False
        producer = {out: node for node in graph.node for out in node.output}
        readers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        for second in graph.node:
            first = producer.get(second.input[0]) if second.op_type == "Transpose" else None
            if first is None or first.op_type != "Transpose" or first.output[0] in graph_outputs:
                continue
            if len(readers.get(first.output[0], [])) != 1 or second.output[0] in graph_outputs:
                continue
            p1 = next((list(helper.get_attribute_value(a)) for a in first.attribute if a.name == "perm"), None)
            p2 = next((list(helper.get_attribute_value(a)) for a in second.attribute if a.name == "perm"), None)
            if p1 is None or p2 is None or [p1[i] for i in p2] != list(range(len(p1))):
                continue
            source, target = first.input[0], second.output[0]
            for node in graph.node:  # readers of the pair's output read its input instead
                node.input[:] = [source if name == target else name for name in node.input]
            graph.node.remove(second)
            graph.node.remove(first)
            removed += 2
            changed = True
            break
    return model, removed


def _drop_unused(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def strip_qdq(model: Any) -> Any:
    """The float graph under a QDQ graph: weights dequantized, activation QuantizeLinear/DequantizeLinear pairs
    bypassed. What the INT8 engine is measured against (an FP16 engine of the same network)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = {out: node for node in graph.node for out in node.output}
    renamed: dict[str, str] = {}
    dropped = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in inits:  # a quantized weight: its float values, under the DequantizeLinear's output name
            q = numpy_helper.to_array(inits[source]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(scale) == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
            graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
            dropped.append(node)
        elif (quant := nodes.get(source)) is not None and quant.op_type == "QuantizeLinear":
            renamed[node.output[0]] = quant.input[0]  # DQ(Q(x)) is x
            dropped += [node, quant]
    for node in {id(n): n for n in dropped}.values():
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    for output in graph.output:
        if output.name in renamed:  # a graph output produced by a DQ: keep its name with an Identity
            from onnx import helper

            graph.node.append(helper.make_node("Identity", [renamed[output.name]], [output.name]))
    _drop_unused(model)
    return model
