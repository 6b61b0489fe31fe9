"""The dataflow of a placed program: tasks, transfers and the bytes that cross chips.

Per inference, each analog layer runs on every tile that holds its slices
(one MVM per input vector and slice, slices on a tile one after another);
each host stage and each digital partial-sum reduction runs on the host.
Data moves as 8-bit words: a layer's input goes to every chip that holds
the layer, from the host (graph inputs, host stages, partial sums reduced
on the host) or from the chips of the analog layer that produced it; a
layer's outputs go to the host when a host stage or the graph reads them or
when its partial sums are reduced there. Transfers between two chips take
the links of the spec's topology ("host": through the host, one link per
chip each way; "ring"; "mesh": XY routes).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from anac.core.program import MVM, Program, copy_counts

BYTES_PER_ELEMENT = 1  # 8-bit inputs and outputs


@dataclass
class Task:
    """Something that takes time on one or more resources (a tile, the host, links)."""

    id: str
    kind: str  # "mvm", "host", "sum", "transfer"
    resources: list[str]
    duration_ns: float
    after: list[str] = field(default_factory=list)  # task ids that must end first
    nbytes: int = 0
    src: str = ""
    dst: str = ""


def single_row_block(prog: Program, mvm: MVM) -> bool:
    """Every slice of the layer spans all of its rows: its outputs need no partial sums."""
    return all(s.n_rows == prog.matrices[s.matrix].shape[0]  # type: ignore[index]
               for s in prog.slices or [] if prog.matrices[s.matrix].node == mvm.node)  # type: ignore[index]


def output_on_chip(prog: Program, mvm: MVM) -> bool:
    """Whether the layer's finished output exists on its chips (else on the host)."""
    return prog.hardware.partial_sums == "chip" or single_row_block(prog, mvm)


def outputs_on_chip(prog: Program) -> dict[str, bool]:
    """``output_on_chip`` for every crossbar layer, in one pass over the slices."""
    full = dict.fromkeys(prog.mvms or {}, True)
    if prog.hardware.partial_sums != "chip":
        for s in prog.slices or []:
            m = prog.matrices[s.matrix]  # type: ignore[index]
            if s.n_rows != m.shape[0]:
                full[m.node] = False
    return full


def layer_tiles(prog: Program) -> dict[str, dict[tuple[int, int], list[int]]]:
    """{layer: {(chip, tile): [slice ids]}}."""
    out: dict[str, dict[tuple[int, int], list[int]]] = defaultdict(lambda: defaultdict(list))
    for s in prog.slices or []:
        out[prog.matrices[s.matrix].node][(s.chip, s.tile)].append(s.id)  # type: ignore[index]
    return out


def copy_vectors(vectors: int, copies: int, copy: int) -> int:
    """The input vectors (products) copy ``copy`` of ``copies`` runs: the vectors split as evenly as possible."""
    return vectors // copies + (copy < vectors % copies)


def slice_vectors(prog: Program) -> dict[int, int]:
    """{slice id: the MVMs it runs per inference}: its layer's vectors, shared among the copies of its matrix
    (replicate), or all of them on every copy (averaged copies: Matrix.copy_mode "average")."""
    copies = copy_counts(prog)
    out = {}
    for s in prog.slices or []:
        m = prog.matrices[s.matrix]  # type: ignore[index]
        vectors = max(1, (prog.mvms or {})[m.node].params.get("traffic", {}).get("vectors", 1))
        out[s.id] = vectors if m.copy_mode == "average" else copy_vectors(vectors, copies.get(s.matrix, 1), s.copy)
    return out


def tile_time_ns(prog: Program, ids: list[int], vectors: dict[int, int]) -> float:
    """Time the slices ``ids`` of one layer on one tile take per inference: per copy, its vectors times
    the time slots its slices use (slices in one slot share no rows or columns and integrate together)."""
    slots: dict[int, set[int]] = defaultdict(set)
    runs: dict[int, int] = {}
    for i in ids:
        s = prog.slices[i]  # type: ignore[index]
        slots[s.copy].add(s.slot)
        runs[s.copy] = vectors[i]
    return prog.hardware.mvm_time_ns * sum(runs[c] * len(slots[c]) for c in slots)


def route(hw_links_topology: str, chips: int, a: int, b: int) -> list[str]:
    """Link resources a transfer from chip a to chip b occupies (``-1`` is the host)."""
    if a == b:
        return []
    if hw_links_topology == "host" or a < 0 or b < 0:
        return [f"link:{c}" for c in (a, b) if c >= 0]
    if hw_links_topology == "ring":
        fwd = (b - a) % chips
        step = 1 if fwd <= chips - fwd else -1
        hops, c = [], a
        while c != b:
            n = (c + step) % chips
            hops.append(f"link:{min(c, n)}-{max(c, n)}")
            c = n
        return hops
    width = max(1, int(round(chips ** 0.5)))  # mesh: chips on a near-square grid, XY routing
    (ar, ac), (br, bc) = divmod(a, width), divmod(b, width)
    hops, r, c = [], ar, ac
    while c != bc:
        n = c + (1 if bc > c else -1)
        hops.append(f"link:{r * width + min(c, n)}-{r * width + max(c, n)}")
        c = n
    while r != br:
        n = r + (1 if br > r else -1)
        hops.append(f"link:{min(r, n) * width + c}-{max(r, n) * width + c}")
        r = n
    return hops


def tasks(prog: Program) -> list[Task]:
    """Every task of one inference, with its resources, duration and predecessors (linear in the program)."""
    hw, links = prog.hardware, prog.hardware.links
    chips = prog.chips_used or 0
    mvms = prog.mvms or {}
    writer = {mv.output: mv.node for mv in mvms.values()}
    copies = copy_counts(prog)
    producer: dict[str, str] = {}  # tensor -> "host:<stage>" or "mvm:<layer>"
    host_reads: set[str] = {t.name for t in prog.outputs}  # tensors the host (or the caller) reads
    for st in prog.stages or []:
        if st.kind == "host":
            host_reads.update(st.inputs)
        for t in st.outputs:
            if st.kind == "analog":
                producer[t] = f"mvm:{writer[t]}"
            else:  # host stages, and recurrent cells whose state updates run on the host
                producer[t] = f"host:{st.name}"
    on_tiles = layer_tiles(prog)
    on_chip = outputs_on_chip(prog)
    vec = slice_vectors(prog)
    # layer -> chip -> output words per inference (columns times the vectors of their copy)
    words_on: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for s in prog.slices or []:
        words_on[prog.matrices[s.matrix].node][s.chip] += s.n_cols * vec[s.id]  # type: ignore[index]
    by_recurrent: dict[str, list[str]] = defaultdict(list)
    for m, mv in mvms.items():
        if "recurrent" in mv.params:
            by_recurrent[mv.params["recurrent"]].append(m)
    out: list[Task] = []
    ready_on_host: dict[str, list[str]] = {}  # tensor -> tasks after which it is on the host
    done_on_chip: dict[str, dict[int, list[str]]] = {}  # layer -> chip -> its MVM tasks there

    def transfer(tid: str, src: int, dst: int, nbytes: int, after: list[str]) -> Task:
        res = route(links.topology, chips, src, dst)
        t = Task(tid, "transfer", res, links.latency_ns * max(1, len(res)) + nbytes / links.bandwidth_bytes_per_ns,
                 after, nbytes, "host" if src < 0 else f"chip {src}", "host" if dst < 0 else f"chip {dst}")
        out.append(t)
        return t

    for st in prog.stages or []:
        if st.kind == "host":
            after = [a for t in st.inputs for a in ready_on_host.get(t, [])]
            elems = sum(prog.tensor_elements.get(t, 0) for t in st.outputs)
            out.append(Task(f"host:{st.name}", "host", ["host"], hw.host_stage_ns + hw.host_ns_per_element * elems,
                            after))
            for t in st.outputs:
                ready_on_host[t] = [f"host:{st.name}"]
            continue
        layers = st.nodes
        if st.kind == "recurrent":
            # Summarised per inference: each matrix of the cell runs once per step (its vectors), fed from and
            # returning to the host, which runs the gates of every step.
            layers = by_recurrent[prog.recurrent[st.nodes[0]].node]
            for m in layers:
                ready_on_host[mvms[m].input] = [a for t in st.inputs for a in ready_on_host.get(t, [])]
        for node in layers:
            mvm = mvms[node]
            traffic = mvm.params.get("traffic", {})
            tiles = on_tiles.get(node, {})
            by_chip: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for key in sorted(tiles):
                by_chip[key[0]].append(key)
            src_layer = producer.get(mvm.input, "")
            chip_src = src_layer.startswith("mvm:") and on_chip[src_layer[4:]]
            in_bytes = traffic.get("in_elements", 0) * BYTES_PER_ELEMENT
            done_on_chip[node] = {}
            for chip, keys in sorted(by_chip.items()):
                need = _input_share(prog, [i for key in keys for i in tiles[key]], vec, copies)
                if chip_src:
                    after = []
                    src_cols = words_on[src_layer[4:]]
                    total_cols = sum(src_cols.values())
                    for q, q_tasks in sorted(done_on_chip[src_layer[4:]].items()):
                        if q == chip:
                            after += q_tasks  # on-chip mesh: no link
                        else:
                            share = src_cols[q] / total_cols if total_cols else 0.0  # its output words on q
                            after.append(transfer(f"x:{src_layer[4:]}@{q}>{node}@{chip}", q, chip,
                                                  int(in_bytes * share * need), q_tasks).id)
                else:
                    after = [transfer(f"in:{node}>{chip}", -1, chip, int(in_bytes * need),
                                      list(ready_on_host.get(mvm.input, []))).id]
                ids = []
                for key in keys:
                    tid = f"mvm:{node}@{key[0]}.{key[1]}"
                    out.append(Task(tid, "mvm", [f"tile:{key[0]}.{key[1]}"], tile_time_ns(prog, tiles[key], vec),
                                    list(after)))
                    ids.append(tid)
                done_on_chip[node][chip] = ids
            if not on_chip[node] or "recurrent" in mvm.params or mvm.output in host_reads:
                back = []
                for chip, ids in sorted(done_on_chip[node].items()):
                    back.append(transfer(f"out:{node}<{chip}", chip, -1, words_on[node][chip] * BYTES_PER_ELEMENT,
                                         ids).id)
                if not on_chip[node]:  # partial sums reduced on the host
                    out.append(Task(f"sum:{node}", "sum", ["host"],
                                    hw.host_ns_per_element * traffic.get("out_elements", 0), back))
                    back = [f"sum:{node}"]
                ready_on_host[mvm.output] = back
        if st.kind == "recurrent":
            steps = max((mvms[m].params.get("traffic", {}).get("steps", 1) for m in layers), default=1)
            elems = sum(prog.tensor_elements.get(t, 0) for t in st.outputs)
            after = [a for m in layers for a in ready_on_host.get(mvms[m].output, [])]
            out.append(Task(f"host:{st.name}", "host", ["host"],
                            steps * hw.host_stage_ns + hw.host_ns_per_element * elems, after))
            for t in st.outputs:
                ready_on_host[t] = [f"host:{st.name}"]
    return out


def _input_share(prog: Program, ids: list[int], vec: dict[int, int], copies: dict[str, int]) -> float:
    """The fraction of a layer's input vectors that the slices ``ids`` (one chip's) need: those of their copies
    (``copies``: copy_counts of the program)."""
    matrix = prog.slices[ids[0]].matrix  # type: ignore[index]
    if copies.get(matrix, 1) == 1:
        return 1.0
    mine = {prog.slices[i].copy: vec[i] for i in ids}  # type: ignore[index]
    m = prog.matrices[matrix]  # type: ignore[index]
    vectors = max(1, (prog.mvms or {})[m.node].params.get("traffic", {}).get("vectors", 1))
    return min(1.0, sum(mine.values()) / vectors)


def link_bytes(prog: Program) -> dict[str, int]:
    """Bytes per inference: between chips, between chips and the host, and their sum."""
    chip_chip = host = 0
    for t in tasks(prog):
        if t.kind == "transfer":
            if t.src == "host" or t.dst == "host":
                host += t.nbytes
            else:
                chip_chip += t.nbytes
    return {"chip_to_chip": chip_chip, "host_links": host, "total": chip_chip + host}
