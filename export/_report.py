"""What an export produced: the file, the size of its graph, and how well it matches torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._deps import require

if TYPE_CHECKING:
    import onnx

LOOP_OPS = frozenset({"Scan", "Loop"})
"""ONNX operators that hold a loop body as a subgraph."""


@dataclass(frozen=True)
class GraphStats:
    """Node counts of an ONNX graph; ``loops`` counts the top-level ``Scan``/``Loop`` nodes."""

    opset: int
    nodes: int
    loops: int
    total_nodes: int


def _count(graph: onnx.GraphProto) -> int:
    onnx = require("onnx")
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += _count(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                total += sum(_count(g) for g in attr.graphs)
    return total


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Count the nodes at the top level, the loop nodes among them, and all nodes in all bodies."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    top = model.graph.node
    return GraphStats(
        opset=opset,
        nodes=len(top),
        loops=sum(node.op_type in LOOP_OPS for node in top),
        total_nodes=_count(model.graph),
    )


@dataclass(frozen=True)
class ExportReport:
    """The result of :func:`mali_func.export.to_onnx`.

    Attributes:
        path: the written ONNX file.
        file_bytes: its size (the graph and the weights).
        opset: the ONNX opset of the default domain.
        nodes: nodes in the top-level graph.
        loops: ``Scan``/``Loop`` nodes in the top-level graph; one per integration (per
            ``odeint`` call) when the solve exported as a loop.
        total_nodes: nodes including those inside loop bodies.
        input_names, output_names: the graph's inputs and outputs, in order.
        dynamic_batch: whether the first axis of every input is symbolic in the written file
            (read back from it, named ``batch``).
        export_seconds: time spent tracing, translating and saving.
        checked: whether the checker and the onnxruntime comparison ran.
        batches: the batch sizes at which onnxruntime was compared with torch.
        max_abs_error: the largest absolute difference over all outputs and batches.
        max_rel_error: the largest difference relative to the largest magnitude of the torch
            output it belongs to.
        rtol: the bound ``max_rel_error`` was checked against.
    """

    path: Path
    file_bytes: int
    opset: int
    nodes: int
    loops: int
    total_nodes: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    export_seconds: float
    checked: bool
    batches: tuple[int, ...]
    max_abs_error: float | None
    max_rel_error: float | None
    rtol: float

    def __str__(self) -> str:
        lines = [
            f"ONNX file      {self.path} ({self.file_bytes / 1024:.1f} KiB, opset {self.opset})",
            f"graph          {self.nodes} top-level nodes, {self.loops} loop node(s), "
            f"{self.total_nodes} nodes in all",
            f"inputs         {', '.join(self.input_names)}"
            + (" (dynamic batch axis)" if self.dynamic_batch else " (fixed shapes)"),
            f"outputs        {', '.join(self.output_names)}",
            f"export         {self.export_seconds:.2f} s",
        ]
        if self.checked and self.max_rel_error is not None:
            lines.append(
                "check          onnx.checker (full) passed; onnxruntime vs torch at batch "
                f"{', '.join(map(str, self.batches))}: max rel. error {self.max_rel_error:.2e} "
                f"(max abs. {self.max_abs_error:.2e}, rtol {self.rtol:.0e})"
            )
        else:
            lines.append("check          skipped (check=False)")
        return "\n".join(lines)
