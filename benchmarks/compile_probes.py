"""The child side of ``benchmarks/compile_breakdown.py``: one compiled training step, timed
(``time_child``) or traced and counted (``trace_child``), in a fresh process whose environment
the parent set. See that file for what is measured and how the phases are split.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"


# ---------------------------------------------------------------------------------------------
# The problems (built in the child, after its environment is set)
# ---------------------------------------------------------------------------------------------


def _digits_step(method: str) -> tuple[Any, Callable[[], Any], Callable[[Any], Any], Any]:
    """The main job's step: ``(field, compute_loss, step(loss_fn), model)``."""
    import torch
    from torch import nn

    sys.path.insert(0, str(EXAMPLES))
    from digits_parts import DigitsModel, load_digits_split

    from mali_func import DriftMonitor

    torch.manual_seed(0)
    data = load_digits_split()
    model = DigitsModel(n_steps=6, monitor=DriftMonitor())
    if method != "alf":
        model.ode.options["method"] = method
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=100)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    monitor = model.ode.options["gradient"].monitor
    x, y = data["x_train"][:64], data["y_train"][:64]

    def compute_loss(x_: torch.Tensor, y_: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(x_), y_)

    def step(fn: Callable[..., torch.Tensor]) -> float:
        loss = fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        if monitor.error is not None:
            monitor.error.item()
            monitor.reset()
        return value

    return model.ode.field, compute_loss, step, model


def _mlp_step(method: str) -> tuple[Any, Callable[..., Any], Callable[[Any], Any], Any]:
    """The compile benchmark's step (``benchmarks/extras.py``): no optimizer, gradients only."""
    import torch
    from _common import SmallField  # the benchmarks' 2-64-2 field (after torch's import)

    import mali_func

    field = SmallField()
    torch.manual_seed(1)
    y0 = torch.randn(256, 2)
    t = torch.tensor([0.0, 1.0])

    def loss(y: torch.Tensor) -> torch.Tensor:
        ys = mali_func.odeint(field, y, t, n_steps=20, gradient="mali", method=method)
        return ys[-1].pow(2).mean()

    def step(fn: Callable[..., torch.Tensor]) -> float:
        for p in field.parameters():
            p.grad = None
        out = fn(y0)
        out.backward()
        return out.item()

    return field, loss, step, field


def _prewarm(method: str) -> None:
    """Fill ``ButcherTableau.stability_coefficients`` (a ``functools.cached_property``) eagerly.

    Workaround: in torch 2.13 dynamo cannot trace the lock that Python 3.11's ``cached_property``
    takes on its first read, and under ``coupling="auto"`` that first read happens inside the
    forward ``while_loop`` body (``CoupledRK._split``): a compiled coupled solve in a fresh process
    fails with ``UncapturedHigherOrderOpError: ... Unsupported context manager`` unless an eager
    solve ran first.
    """
    if method == "alf":
        return
    from mali_func.schemes._tableau import TABLEAUS

    _ = TABLEAUS[method].stability_coefficients


BUILDERS = {"digits": _digits_step, "mlp": _mlp_step}


def _grad_signature(module: Any) -> list[float]:
    """Sum and sum of squares of every parameter (after a step: the updated weights or grads)."""
    out: list[float] = []
    for p in module.parameters():
        x = p.grad if p.grad is not None else p.detach()
        out += [float(x.double().sum()), float(x.double().square().sum())]
    return out


# ---------------------------------------------------------------------------------------------
# Child 1: one timed first compiled step
# ---------------------------------------------------------------------------------------------


def _opt_in() -> None:
    """Let the FX graph cache and the AOTAutograd cache take this solve's graphs."""
    import torch
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.unsafe_marked_cacheable_functions = {
        "torch.ops.higher_order.while_loop": torch.__version__
    }
    functorch_config.autograd_cache_allow_custom_autograd_functions = True


class _BypassLog:
    """Collects the caches' bypass reasons from their loggers."""

    def __init__(self) -> None:
        import logging

        self.reasons: list[str] = []
        log = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                if "ypass" in message:
                    message = " ".join(message.split())[:160]
                    log.reasons.append(f"{record.name.rsplit('.', 1)[-1]}: {message}")

        for name in ("torch._inductor.codecache", "torch._functorch._aot_autograd.autograd_cache"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            logger.addHandler(Handler())


def _metrics() -> dict[str, dict[str, float]]:
    """``compile_times`` as ``{span: {"s": total seconds, "n": count}}``."""
    from torch._dynamo.utils import compile_times

    names, _ = compile_times(repr="csv", aggregate=True)
    _, each = compile_times(repr="csv", aggregate=False)
    out = {}
    for name, values in zip(names, each):
        parts = [float(v) for v in str(values).split(", ") if v]
        out[name] = {"s": sum(parts), "n": len(parts)}
    return out


def _phases(m: dict[str, dict[str, float]], first_s: float) -> dict[str, float]:
    def s(key: str) -> float:
        return m.get(key, {}).get("s", 0.0)

    dynamo_total = s("_compile.compile_inner")
    backend = s("OutputGraph.call_user_compiler")
    ind_fw, ind_bw = s("compile_fx.<locals>.fw_compiler_base"), s("compile_fx.<locals>.bw_compiler")
    bwd = s("backward._backward_impl")
    cxx = s("compile_file")
    inductor = ind_fw + ind_bw
    aot = (backend - ind_fw) + (bwd - ind_bw)
    dynamo = dynamo_total - backend
    return {
        "first_step_s": first_s,
        "dynamo_s": dynamo,
        "bytecode_tracing_s": s("bytecode_tracing"),
        "aot_s": aot,
        "inductor_s": inductor,
        "inductor_fw_s": ind_fw,
        "inductor_bw_s": ind_bw,
        "cxx_compile_s": cxx,
        "cxx_compiles": m.get("compile_file", {}).get("n", 0),
        # On an AOTAutograd cache hit inductor is not entered; the kernels' load is in ``aot_s``.
        "inductor_rest_s": max(inductor - cxx, 0.0),
        "lowering_s": s("GraphLowering.run"),
        "rest_s": first_s - dynamo_total - bwd,
    }


def time_child(problem: str, method: str, opt_in: bool) -> dict[str, Any]:
    """The first compiled step in this (fresh) process, its phases and the caches' counters."""
    import torch

    torch.set_num_threads(1)
    from torch._dynamo.utils import counters

    bypass = _BypassLog()
    if opt_in:
        _opt_in()
    _prewarm(method)
    _, compute_loss, step, module = BUILDERS[problem](method)
    compiled = torch.compile(compute_loss, fullgraph=True)
    load = os.getloadavg()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    start = time.perf_counter()
    loss = step(compiled)
    first_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cxx_cpu_s = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    signature = _grad_signature(module)
    metrics = _metrics()
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        step(compiled)
        warm.append(time.perf_counter() - start)
    return {
        "problem": problem,
        "method": method,
        "opt_in": opt_in,
        "loss": loss,
        "signature": signature,
        "warm_step_s": min(warm),
        "first_step_cpu_s": cpu_s + cxx_cpu_s,
        "cxx_cpu_s": cxx_cpu_s,
        "load_average": load,
        "phases": _phases(metrics, first_s),
        "metrics": metrics,
        "counters": {k: dict(counters[k]) for k in ("stats", "aot_autograd", "inductor")},
        "bypass": sorted(set(bypass.reasons)),
        "threads": torch.get_num_threads(),
        "compile_threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS"),
    }


# ---------------------------------------------------------------------------------------------
# Child 2: how often the field is traced, and how many copies the graphs hold
# ---------------------------------------------------------------------------------------------


def _caller_chain(tracer: Any, depth: int = 3) -> str:
    """The names of the nearest ``depth`` mali_func functions the traced call sits in."""
    names = []
    frame = getattr(tracer, "parent", None)
    while frame is not None and len(names) < depth:
        code = getattr(frame, "f_code", None)
        if code is not None and f"{os.sep}mali_func{os.sep}" in code.co_filename:
            names.append(code.co_name)
        frame = getattr(frame, "parent", None)
    return " < ".join(names)


def _op_counts(gm: Any, targets: dict[str, Any]) -> dict[str, int]:
    """Calls of each target over a graph module and all its subgraphs (``while_loop`` bodies,
    autograd.Function bodies)."""
    import torch

    counts = dict.fromkeys(targets, 0)
    nodes = 0
    for module in gm.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            nodes += node.op == "call_function"
            for name, target in targets.items():
                counts[name] += node.op == "call_function" and node.target in target
    counts["call_function nodes"] = nodes
    counts["graph modules"] = sum(isinstance(m, torch.fx.GraphModule) for m in gm.modules())
    return counts


def trace_child(problem: str, method: str) -> dict[str, Any]:
    """Count dynamo's traces of the field's ``forward`` and the field copies in each graph."""
    import torch
    from torch._dynamo import symbolic_convert
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    torch.set_num_threads(1)
    _prewarm(method)
    field, compute_loss, step, _ = BUILDERS[problem](method)
    code = type(field).forward.__code__
    callers: Counter[str] = Counter()
    original = symbolic_convert.InliningInstructionTranslator.build_inline_tracer

    def counting(*args: Any, **kwargs: Any) -> Any:
        tracer = original(*args, **kwargs)
        if tracer.f_code is code:
            callers[_caller_chain(tracer)] += 1
        return tracer

    symbolic_convert.InliningInstructionTranslator.build_inline_tracer = staticmethod(counting)
    aten = torch.ops.aten
    if problem == "digits":
        dynamo_ops = {"conv2d": {torch.conv2d, torch.nn.functional.conv2d}}
        aten_ops = {
            "convolution": {aten.convolution.default},
            "convolution_backward": {aten.convolution_backward.default},
        }
    else:
        dynamo_ops = {"linear": {torch._C._nn.linear, torch.nn.functional.linear}}
        aten_ops = {
            "addmm": {aten.addmm.default},
            "mm": {aten.mm.default},
            "tanh": {aten.tanh.default},
            "tanh_backward": {aten.tanh_backward.default},
        }
    graphs: dict[str, dict[str, int]] = {}

    def compiler(kind: str) -> Callable[[Any, Any], Any]:
        def compile_(gm: Any, example_inputs: Any) -> Any:
            graphs[kind] = _op_counts(gm, aten_ops)
            return make_boxed_func(gm.forward)

        return compile_

    aot = aot_autograd(
        fw_compiler=compiler("aot forward"),
        bw_compiler=compiler("aot backward"),
        partition_fn=min_cut_rematerialization_partition,
    )

    def backend(gm: Any, example_inputs: Any) -> Any:
        graphs["dynamo"] = _op_counts(gm, dynamo_ops)
        return aot(gm, example_inputs)

    compiled = torch.compile(compute_loss, fullgraph=True, backend=backend)
    step(compiled)
    from torch._dynamo.utils import counters

    return {
        "problem": problem,
        "method": method,
        "field_traces": sum(callers.values()),
        "callers": dict(callers),
        "graphs": graphs,
        "unique_graphs": counters["stats"]["unique_graphs"],
        "compile_attempts": len([k for k in _metrics() if k.startswith("compile_attempt_")]),
    }
