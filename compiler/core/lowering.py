"""Lowering of crossbar-mappable ONNX ops to the canonical MVM y = alpha * (x @ W) + bias.

Gemm and MatMul with one constant operand, and Conv and ConvTranspose (any
spatial rank, with groups) with a constant kernel lower to an ``MVM`` plus K x N
``Matrix`` objects. Anything else is a host op; ``lower`` then returns the reason.

A grouped convolution's groups are packed side by side: given the crossbar's
weight grid, each matrix holds as many groups as fit it on a block diagonal
(group g's rows meet only group g's columns; the zero blocks are structural,
never programmed, and counted by ``Program.zero_block_weights``), so a
depthwise layer is a few tile-sized matrices rather than one tiny matrix per
channel. Input rows are ordered (channel, kernel...) channel-major, so a pack of
consecutive groups is exactly the im2col of its consecutive input channels.

ConvTranspose is the convolution of its input dilated by the strides (zeros
between the samples) with the flipped kernel, its in/out channel axes swapped
per group, padded by (k - 1) * dilation - pad: the same im2col MVM as Conv,
summed in the analog domain (no digital overlap-add of scattered outputs).
"""

from __future__ import annotations

import numpy as np
import onnx
from anac.core.errors import InvalidWeightsError
from anac.core.ir import Graph, Node
from anac.core.placeholder import is_placeholder, placeholder
from anac.core.program import MVM, Matrix, weight_matrix

ANALOG_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose")
_FLOAT = onnx.TensorProto.FLOAT


def lower(node: Node, graph: Graph) -> tuple[MVM, list[Matrix]] | str:
    """The MVM and matrices of ``node`` (one per conv group), or why it stays on the host."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ANALOG_OPS:
        return "not a matrix-vector product"
    lowering = {"Gemm": _lower_gemm, "MatMul": _lower_matmul, "Conv": _lower_conv, "ConvTranspose": _lower_conv}
    result = lowering[node.op_type](node, graph)
    if isinstance(result, str):
        return result
    mvm, matrices = result
    for m in matrices if mvm.kind != "conv" else []:  # a conv's kernel is checked whole, once
        check_finite(node, "weight", m.weights)
    if mvm.bias is not None:
        check_finite(node, "bias", mvm.bias)
    return mvm, matrices


def check_finite(node: Node, what: str, arr: np.ndarray) -> None:
    """Raise InvalidWeightsError naming the node when ``arr`` holds NaN or Inf (a placeholder holds neither)."""
    if is_placeholder(arr):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidWeightsError(
            f"node {node.label}: its {what} holds {n_nan} NaN and {n_inf} Inf values "
            f"(first at index {idx} of shape {tuple(arr.shape)}); a crossbar cannot store them")


def _float_activation(graph: Graph, name: str) -> str | None:
    info = graph.info(name)
    if info is None:
        return f"the type of activation '{name}' is unknown"
    if info.elem_type != _FLOAT:
        return f"activation '{name}' is {info.dtype}, crossbars take float32"
    return None


def _const(graph: Graph, name: str) -> np.ndarray | None:
    return graph.constants.get(name) if name else None


def _weight_issue(w: np.ndarray | None) -> str | None:
    if w is None:
        return "no constant weight operand"
    if w.dtype != np.float32:
        return f"weights are {w.dtype}, crossbars take float32"
    if w.size == 0:
        return "empty weight matrix"
    return None


def _lower_gemm(node: Node, graph: Graph) -> tuple[MVM, list[Matrix]] | str:
    a_name, b_name = node.inputs[0], node.inputs[1]
    c_name = node.inputs[2] if len(node.inputs) > 2 else ""
    a, b = _const(graph, a_name), _const(graph, b_name)
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    if b is not None and a is None:
        x_name, w = a_name, (b.T if trans_b else b)
        x_t, y_t = bool(trans_a), False  # x rows are the columns of A when transA
    elif a is not None and b is None:
        # y = A' B' with A' constant: y^T = B'^T A'^T, so W = A'^T and x rows are columns of B'.
        x_name, w = b_name, (a if trans_a else a.T)
        x_t, y_t = not trans_b, True
    else:
        return "both operands are activations" if a is None else "both operands are constants"
    issue = _weight_issue(w) or _float_activation(graph, x_name)
    if issue:
        return issue
    c = _const(graph, c_name)
    if c_name and c is None:
        return "its bias C is an activation"
    beta = float(node.attrs.get("beta", 1.0))
    bias = None if c is None else (np.float32(beta) * c.astype(np.float32))
    mid = node.name
    mvm = MVM(node.name, node.op_type, "dense", x_name, node.outputs[0], [mid], bias=bias,
              alpha=float(node.attrs.get("alpha", 1.0)),
              params={"x_transpose": x_t, "y_transpose": y_t, "squeeze": False})
    return mvm, [Matrix(mid, node.name, 0, weight_matrix(w))]


def _lower_matmul(node: Node, graph: Graph) -> tuple[MVM, list[Matrix]] | str:
    a_name, b_name = node.inputs
    a, b = _const(graph, a_name), _const(graph, b_name)
    if b is not None and a is None:
        x_name, w = a_name, b
    elif a is not None and b is None:
        x_name, w = b_name, a.T  # y = A @ X: rows of x are the columns of X, W = A^T
    else:
        return "both operands are activations" if a is None else "both operands are constants"
    if w.ndim > 2:
        return f"its constant operand has rank {w.ndim}; one crossbar matrix needs rank 1 or 2"
    issue = _weight_issue(w) or _float_activation(graph, x_name)
    if issue:
        return issue
    info = graph.info(x_name)
    x_rank = len(info.shape) if info is not None and info.shape is not None else None
    if x_rank is None and a is not None:  # only a constant on the left needs the rank (transpose x or not)
        return f"the rank of activation '{x_name}' is unknown"
    squeeze = w.ndim == 1  # a 1-D operand: one crossbar column, its axis removed after
    w = w[:, None] if squeeze else w
    # Constant on the left: the activation's last two axes swap around the MVM,
    # unless the activation is a vector (then it is the single input row).
    x_t = a is not None and x_rank is not None and x_rank >= 2
    y_t = x_t and not squeeze
    mvm = MVM(node.name, node.op_type, "dense", x_name, node.outputs[0], [node.name],
              params={"x_transpose": x_t, "y_transpose": y_t, "squeeze": squeeze})
    return mvm, [Matrix(node.name, node.name, 0, weight_matrix(w))]


def _lower_conv(node: Node, graph: Graph) -> tuple[MVM, list[Matrix]] | str:
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    w = _const(graph, w_name)
    if _const(graph, x_name) is not None:
        return "its input is a constant"
    issue = _weight_issue(w) or _float_activation(graph, x_name)
    if issue:
        return issue
    assert w is not None
    if w.ndim < 3:
        return f"kernel of rank {w.ndim}"
    b = _const(graph, b_name)
    if b_name and b is None:
        return "its bias is an activation"
    group = int(node.attrs.get("group", 1))
    transpose = node.op_type == "ConvTranspose"
    spatial = w.ndim - 2
    kernel = [int(k) for k in w.shape[2:]]
    if transpose:
        # (C_in, C_out/group, *k) -> per group the Conv kernel (C_out/group, C_in/group, *k flipped).
        if w.shape[0] % group:
            return f"{w.shape[0]} input channels do not split into {group} groups"
        c_in_g = w.shape[0] // group
        flip = (slice(None), slice(None)) + (slice(None, None, -1),) * spatial
        w = placeholder((w.shape[1] * group, c_in_g, *kernel), np.float32) if is_placeholder(w) else \
            np.concatenate([np.swapaxes(w[g * c_in_g:(g + 1) * c_in_g], 0, 1)[flip] for g in range(group)])
    c_out, c_in_g = w.shape[0], w.shape[1]
    if c_out % group:
        return f"{c_out} output channels do not split into {group} groups"
    params: dict[str, object] = {
        "kernel": kernel,
        "strides": [int(s) for s in node.attrs.get("strides", [1] * spatial)],
        "dilations": [int(d) for d in node.attrs.get("dilations", [1] * spatial)],
        "pads": [int(p) for p in node.attrs.get("pads", [0] * 2 * spatial)],
        "auto_pad": _str(node.attrs.get("auto_pad", "NOTSET")),
        "group": group,
        "in_channels_per_group": int(c_in_g),
        "out_channels_per_group": int(c_out // group),
    }
    if transpose:
        params["transpose"] = True
        params["output_padding"] = [int(p) for p in node.attrs.get("output_padding", [0] * spatial)]
        if "output_shape" in node.attrs:
            params["output_shape"] = [int(d) for d in node.attrs["output_shape"]][-spatial:]
    check_finite(node, "weight", w)
    n_g = c_out // group
    matrices = []
    for g in range(group):
        # (n_g, C_in/g, *k) -> (C_in/g * prod(k), n_g): rows ordered channel-major like im2col.
        wg = w[g * n_g:(g + 1) * n_g].reshape(n_g, -1).T
        mid = node.name if group == 1 else f"{node.name}#g{g}"
        matrices.append(Matrix(mid, node.name, g, weight_matrix(wg)))
    bias = None if b is None else b.astype(np.float32)
    mvm = MVM(node.name, node.op_type, "conv", x_name, node.outputs[0], [m.id for m in matrices],
              bias=bias, params=params)
    return mvm, matrices


def groups_that_fit(matrices: list[Matrix], grid: tuple[int, int]) -> int:
    """How many of a grouped conv's group matrices fit one crossbar grid on a block diagonal."""
    k_g, n_g = matrices[0].shape
    return max(1, min(grid[0] // k_g, grid[1] // n_g))


def pack_sizes(group: int, per: int) -> list[int]:
    """Groups in each matrix: as many matrices as ``per`` groups each needs, the groups spread evenly
    (the first matrices one group larger when they do not divide)."""
    count = -(-group // max(1, per))
    return [group // count + (i < group % count) for i in range(count)]


def pack_groups(mvm: MVM, matrices: list[Matrix], per: int) -> list[Matrix]:
    """The group matrices of a conv as block-diagonal matrices of about ``per`` groups each (spread evenly).

    Sets the MVM's ``groups_per_matrix`` and ``block`` (rows, columns per group) params and its matrix ids.
    """
    group = len(matrices)
    if group == 1 or per <= 1:
        return matrices
    sizes = pack_sizes(group, per)
    k_g, n_g = matrices[0].shape
    packed = []
    for j, (g0, g1) in enumerate(zip(np.cumsum([0] + sizes[:-1]).tolist(), np.cumsum(sizes).tolist(), strict=True)):
        shape = ((g1 - g0) * k_g, (g1 - g0) * n_g)
        if is_placeholder(matrices[g0].weights):  # a plan: shapes only
            w = placeholder(shape, np.float32)
        else:
            w = np.zeros(shape, np.float32)
            for i, m in enumerate(matrices[g0:g1]):
                w[i * k_g:(i + 1) * k_g, i * n_g:(i + 1) * n_g] = m.weights
        packed.append(Matrix(f"{mvm.node}#g{g0}-{g1 - 1}", mvm.node, j, w))
    mvm.params["groups_per_matrix"] = sizes[0]
    mvm.params["block"] = [k_g, n_g]
    mvm.matrices = [m.id for m in packed]
    return packed


def _str(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
