"""Recurrent layers (ONNX LSTM, GRU, RNN) lowered to cells: analog MVMs per time step, gates on the host.

Per direction the weights become crossbar matrices and the gate arithmetic a
small ONNX model run on the host once per time step:
- LSTM and RNN: one stacked matrix [W; R]^T ((input + hidden) rows x gates *
  hidden columns), driven by [x_t, h_{t-1}]; the cell model adds the biases
  and computes the gates (activations, clip, peepholes, input_forget).
- GRU: [[W_z W_r]; [R_z R_r]]^T driven by [x_t, h_{t-1}], W_h^T driven by x_t,
  and R_h^T driven by r_t * h_{t-1} (or h_{t-1} when linear_before_reset),
  with two host phases around the last product.
A cell is a list of steps over a per-step environment holding "x", "h", "c":
("concat", out, [a, b]), ("mvm", mvm node, in, out), ("host", model index,
[inputs], [outputs]). The simulator (backends/simulator.py) runs it over the
time steps with sequence_lens masking, both directions, both layouts (the
products of x alone for all steps at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from anac.core.ir import Graph, Node
from anac.core.lowering import check_finite
from anac.core.placeholder import is_placeholder, placeholder
from anac.core.program import MVM, Matrix, weight_matrix
from onnx import TensorProto, helper, numpy_helper

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_CELL_OPSET = 17


@dataclass
class Cell:
    """One direction of a recurrent layer: its steps and its host models."""

    steps: list[tuple[Any, ...]]
    models: list[onnx.ModelProto] = field(repr=False)


@dataclass
class Recurrent:
    """A lowered LSTM/GRU/RNN node."""

    node: str
    op_type: str
    hidden: int
    layout: int
    directions: list[str]  # "forward" / "reverse", in output order
    x: str
    sequence_lens: str  # "" when absent
    initial_h: str
    initial_c: str
    outputs: list[str]  # Y, Y_h, Y_c ("" when absent)
    cells: list[Cell]
    constants: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # initial states given as constants
    # An embedding absorbed into the input matrix: {"gather": node, "vocab": V, "input": I, "rows_saved": I};
    # then ``x`` is the token indices and constants["table_d<d>"] = Emb @ W_d^T (V x gates*hidden) on the host.
    absorbed: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "hidden": self.hidden, "layout": self.layout,
                "directions": self.directions, "x": self.x, "sequence_lens": self.sequence_lens,
                "initial_h": self.initial_h, "initial_c": self.initial_c, "outputs": self.outputs,
                "cells": [[list(s) for s in c.steps] for c in self.cells],
                "constants": sorted(self.constants), "absorbed": self.absorbed}


def absorbable_embedding(node: Node, graph: Graph) -> Node | None:
    """A Gather on a constant table that only feeds ``node`` and has fewer rows than the layer has inputs.

    Premultiplying the table by the input matrix (Emb @ W^T, as the paper did for
    the RNN-T decoder) then removes the input rows from the crossbar: it saves
    devices exactly when the vocabulary is smaller than the input width.
    """
    if node.op_type not in ("LSTM", "RNN") or not node.inputs:
        return None
    gather = graph.producers().get(node.inputs[0])
    if gather is None or gather.op_type != "Gather" or gather.domain not in ("", "ai.onnx"):
        return None
    table = graph.constants.get(gather.inputs[0])
    users = graph.consumers().get(node.inputs[0], [])
    if table is None or table.ndim != 2 or int(gather.attrs.get("axis", 0)) != 0 or len(users) != 1:
        return None
    if node.inputs[0] in {t.name for t in graph.outputs} or int(node.attrs.get("layout", 0)) != 0:
        return None
    return gather if table.shape[0] < table.shape[1] else None


def lower_recurrent(node: Node, graph: Graph, embedding: Node | None = None
                    ) -> tuple[Recurrent, list[MVM], list[Matrix]] | str:
    """The cell, MVMs and matrices of a recurrent node, or why it stays on the host."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in RECURRENT_OPS:
        return "not a recurrent layer"
    ins = list(node.inputs) + [""] * (8 - len(node.inputs))
    w, r = graph.constants.get(ins[1]), graph.constants.get(ins[2])
    if w is None or r is None:
        return "its W or R weights are not constants"
    if w.dtype != np.float32:
        return f"weights are {w.dtype}, crossbars take float32"
    b = graph.constants.get(ins[3]) if ins[3] else None
    if ins[3] and b is None:
        return "its bias B is not a constant"
    peep = graph.constants.get(ins[7]) if node.op_type == "LSTM" and ins[7] else None
    if node.op_type == "LSTM" and ins[7] and peep is None:
        return "its peepholes P are not a constant"
    info = graph.info(ins[0])
    if info is None or info.elem_type != TensorProto.FLOAT:
        return "its input is not float32"
    for what, arr in (("W", w), ("R", r), ("B", b), ("P", peep)):
        if arr is not None:
            check_finite(node, what, arr)
    hidden = int(node.attrs.get("hidden_size", r.shape[-1]))
    direction = _s(node.attrs.get("direction", "forward"))
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    acts = [_s(a) for a in node.attrs.get("activations", [])] or _DEFAULT_ACTS[node.op_type] * len(dirs)
    alphas, betas = list(node.attrs.get("activation_alpha", [])), list(node.attrs.get("activation_beta", []))
    n_act = len(_DEFAULT_ACTS[node.op_type])
    if len(acts) < n_act * len(dirs):
        return f"its activations list has {len(acts)} entries; {direction} {node.op_type} needs {n_act * len(dirs)}"
    g = _GATES[node.op_type]
    params = _activation_params(acts[:n_act * len(dirs)], alphas, betas)
    cells, mvms, mats = [], [], []
    for d in range(len(dirs)):
        wd, rd = w[d], r[d]  # (g*H, I), (g*H, H)
        bd = b[d] if b is not None else np.zeros(2 * g * hidden, np.float32)
        act = params[d * n_act:(d + 1) * n_act]
        prefix = f"{node.name}/d{d}"
        if node.op_type in ("LSTM", "RNN"):
            model = (_lstm_model if node.op_type == "LSTM" else _rnn_model)(node, bd, hidden, act, peep, d)
            if embedding is not None:  # x W^T comes from the premultiplied table; only R is on the crossbar
                mvm, mat = _mvm(node, f"{prefix}/R", _rows(rd.T), "h", "zh")
                steps = [("mvm", mvm.node, "h", "zh"), ("add", "z", ["x", "zh"]),
                         ("host", 0, ["z", "h", "c"], ["h_new", "c_new"])]
            else:
                stacked = _rows(wd.T, rd.T)  # (I + H) x g*H
                mvm, mat = _mvm(node, f"{prefix}/WR", stacked, "v", "z")
                steps = [("concat", "v", ["x", "h"]), ("mvm", mvm.node, "v", "z"),
                         ("host", 0, ["z", "h", "c"], ["h_new", "c_new"])]
            cells.append(Cell(steps, [model]))
            mvms.append(mvm)
            mats.append(mat)
        else:
            wz_r = _rows(wd[:2 * hidden].T, rd[:2 * hidden].T)
            m1, a1 = _mvm(node, f"{prefix}/WRzr", wz_r, "v", "zr")
            m2, a2 = _mvm(node, f"{prefix}/Wh", _rows(wd[2 * hidden:].T), "x", "xh")
            m3, a3 = _mvm(node, f"{prefix}/Rh", _rows(rd[2 * hidden:].T), "hr", "rh")
            lbr = int(node.attrs.get("linear_before_reset", 0))
            first, second = _gru_models(node, bd, hidden, act, lbr)
            steps = [("concat", "v", ["x", "h"]), ("mvm", m1.node, "v", "zr"), ("mvm", m2.node, "x", "xh"),
                     ("host", 0, ["zr", "h"], ["z", "r", "hr"]), ("mvm", m3.node, "hr", "rh"),
                     ("host", 1, ["z", "r", "xh", "rh", "h"], ["h_new", "c_new"])]
            cells.append(Cell(steps, [first, second]))
            mvms += [m1, m2, m3]
            mats += [a1, a2, a3]
    outputs = list(node.outputs) + [""] * (3 - len(node.outputs))
    rec = Recurrent(node.name, node.op_type, hidden, int(node.attrs.get("layout", 0)), dirs, ins[0],
                    ins[4], ins[5], ins[6] if node.op_type == "LSTM" else "", outputs[:3], cells)
    for name in (rec.sequence_lens, rec.initial_h, rec.initial_c):
        if name and name in graph.constants:
            rec.constants[name] = graph.constants[name]
    if embedding is not None:
        table = graph.constants[embedding.inputs[0]]
        table = table if is_placeholder(table) else table.astype(np.float64)
        for d in range(len(dirs)):
            planned = is_placeholder(table) or is_placeholder(w)
            rec.constants[f"table_d{d}"] = placeholder((table.shape[0], w.shape[1]), np.float32) if planned \
                else (table @ w[d].T.astype(np.float64)).astype(np.float32)
        rec.x = embedding.inputs[1]
        rec.absorbed = {"gather": embedding.name, "vocab": int(table.shape[0]), "input": int(table.shape[1]),
                        "rows_saved": int(table.shape[1])}
    return rec, mvms, mats


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


_USES_ALPHA = ("Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu")
_USES_BETA = ("Affine", "ScaledTanh", "HardSigmoid")


def _activation_params(acts: list[str], alphas: list[float], betas: list[float]
                       ) -> list[tuple[str, float | None, float | None]]:
    """(name, alpha, beta) per activation: the alpha and beta lists are consumed, in order, only by the
    activations that take them (as onnxruntime reads them)."""
    out, ia, ib = [], 0, 0
    for a in acts:
        alpha = float(alphas[ia]) if a in _USES_ALPHA and ia < len(alphas) else None
        beta = float(betas[ib]) if a in _USES_BETA and ib < len(betas) else None
        ia += a in _USES_ALPHA and ia < len(alphas)
        ib += a in _USES_BETA and ib < len(betas)
        out.append((a, alpha, beta))
    return out


def _mvm(node: Node, name: str, w: np.ndarray, x: str, y: str) -> tuple[MVM, Matrix]:
    mvm = MVM(name, node.op_type, "dense", f"{name}:{x}", f"{name}:{y}", [name],
              params={"x_transpose": False, "y_transpose": False, "squeeze": False, "recurrent": node.name})
    return mvm, Matrix(name, name, 0, w)


def _rows(*blocks: np.ndarray) -> np.ndarray:
    """The blocks (each K_i x N, transposed ONNX weights) stacked row-wise as one float32 matrix: a lone block
    as it is (a view, see weight_matrix), several joined in Fortran order (the originals' rows concatenated: a
    fast copy); a placeholder when any block is one (a plan: no values to copy)."""
    if any(is_placeholder(b) for b in blocks):
        return placeholder((sum(b.shape[0] for b in blocks), blocks[0].shape[1]), np.float32)
    if len(blocks) == 1:
        return weight_matrix(blocks[0])
    return np.concatenate([b.T for b in blocks], axis=1, dtype=np.float32).T


class _Builder:
    """A tiny ONNX graph builder for the cell models."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: np.ndarray) -> str:
        name = f"k{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op: str, *ins: str, **attrs: Any) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op, list(ins), [out], **attrs))
        return out

    def slice(self, x: str, k: int, hidden: int) -> str:
        return self.op("Slice", x, self.const_i([k * hidden]), self.const_i([(k + 1) * hidden]), self.const_i([1]))

    def const_i(self, value: list[int]) -> str:
        name = f"k{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def act(self, x: str, spec: tuple[str, float | None, float | None]) -> str:
        name, alpha, beta = spec
        if name in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"):
            return self.op(name, x)
        if name == "Affine":
            return self.op("Add", self.op("Mul", x, self.const(np.float32(alpha))), self.const(np.float32(beta)))
        if name == "ScaledTanh":
            return self.op("Mul", self.op("Tanh", self.op("Mul", x, self.const(np.float32(beta)))),
                           self.const(np.float32(alpha)))
        kw = {} if alpha is None else {"alpha": alpha}
        if name == "HardSigmoid" and beta is not None:
            kw["beta"] = beta
        return self.op(name, x, **kw)  # LeakyRelu, ThresholdedRelu, HardSigmoid, Elu

    def clip(self, x: str, node: Node) -> str:
        c = node.attrs.get("clip")
        if c is None:
            return x
        return self.op("Clip", x, self.const(np.float32(-c)), self.const(np.float32(c)))

    def model(self, inputs: list[str], outputs: list[tuple[str, str]]) -> onnx.ModelProto:
        ins = [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs]
        for new, old in outputs:
            self.nodes.append(helper.make_node("Identity", [old], [new]))
        outs = [helper.make_tensor_value_info(new, TensorProto.FLOAT, None) for new, _ in outputs]
        m = helper.make_model(helper.make_graph(self.nodes, "cell", ins, outs, self.inits),
                              opset_imports=[helper.make_opsetid("", _CELL_OPSET)], producer_name="anac")
        m.ir_version = 8
        return m


def _lstm_model(node: Node, b: np.ndarray, hidden: int, act: list[Any], peep: np.ndarray | None,
                d: int) -> onnx.ModelProto:
    g = _Builder()
    z = g.op("Add", "z", g.const(b[:4 * hidden] + b[4 * hidden:]))
    i, o, f, c = (g.slice(z, k, hidden) for k in range(4))  # ONNX gate order: i, o, f, c
    p = peep[d] if peep is not None else None
    if p is not None:
        i = g.op("Add", i, g.op("Mul", "c", g.const(p[:hidden])))
        f = g.op("Add", f, g.op("Mul", "c", g.const(p[2 * hidden:])))
    it = g.act(g.clip(i, node), act[0])
    if int(node.attrs.get("input_forget", 0)):
        ft = g.op("Sub", g.const(np.float32(1.0)), it)
    else:
        ft = g.act(g.clip(f, node), act[0])
    ct = g.act(g.clip(c, node), act[1])
    c_new = g.op("Add", g.op("Mul", ft, "c"), g.op("Mul", it, ct))
    if p is not None:
        o = g.op("Add", o, g.op("Mul", c_new, g.const(p[hidden:2 * hidden])))
    ot = g.act(g.clip(o, node), act[0])
    h_new = g.op("Mul", ot, g.act(c_new, act[2]))
    return g.model(["z", "h", "c"], [("h_new", h_new), ("c_new", c_new)])


def _rnn_model(node: Node, b: np.ndarray, hidden: int, act: list[Any], peep: Any, d: int) -> onnx.ModelProto:
    g = _Builder()
    z = g.op("Add", "z", g.const(b[:hidden] + b[hidden:]))
    h_new = g.act(g.clip(z, node), act[0])
    return g.model(["z", "h", "c"], [("h_new", h_new), ("c_new", "c")])


def _gru_models(node: Node, b: np.ndarray, hidden: int, act: list[Any], lbr: int) -> tuple[onnx.ModelProto, ...]:
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    g1 = _Builder()
    zr = g1.op("Add", "zr", g1.const(wb[:2 * hidden] + rb[:2 * hidden]))
    z = g1.act(g1.clip(g1.slice(zr, 0, hidden), node), act[0])
    r = g1.act(g1.clip(g1.slice(zr, 1, hidden), node), act[0])
    hr = "h" if lbr else g1.op("Mul", r, "h")
    first = g1.model(["zr", "h"], [("z", z), ("r", r), ("hr", hr)])
    g2 = _Builder()
    if lbr:  # h~ = g(x Wh + Wbh + r * (h Rh + Rbh))
        pre = g2.op("Add", g2.op("Add", "xh", g2.const(wb[2 * hidden:])),
                    g2.op("Mul", "r", g2.op("Add", "rh", g2.const(rb[2 * hidden:]))))
    else:  # h~ = g(x Wh + (r * h) Rh + Rbh + Wbh)
        pre = g2.op("Add", g2.op("Add", "xh", "rh"), g2.const(wb[2 * hidden:] + rb[2 * hidden:]))
    ht = g2.act(g2.clip(pre, node), act[1])
    one_minus_z = g2.op("Sub", g2.const(np.float32(1.0)), "z")
    h_new = g2.op("Add", g2.op("Mul", one_minus_z, ht), g2.op("Mul", "z", "h"))
    return first, g2.model(["z", "r", "xh", "rh", "h"], [("h_new", h_new), ("c_new", "h")])
