"""ONNX export: the scan path, parity with torch, graph size, errors, CLI and torch-free inference.

Float32, small models; every export takes a few seconds, so exports are shared per module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

import mali_func
from mali_func import ALF, odeint
from mali_func.backends._loops import PythonLoops, ScanLoops
from mali_func.export import ExportError, ExportReport, ParityError, to_onnx
from mali_func.field._field import bind_field
from mali_func.gradients._passes import forward
from mali_func.stepping._grid import UniformGrid

ROOT = Path(__file__).resolve().parents[1]


class Tanh(nn.Module):
    """``f(t, y) = W2 tanh(W1 y + t c)``, float32."""

    def __init__(self, dim: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, dim)
        self.c = nn.Parameter(0.3 * torch.randn(hidden))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.l2(torch.tanh(self.l1(y) + t * self.c))


class Solve(nn.Module):
    """Integrate the input over ``times`` with ``n_steps`` per interval; the last state or all."""

    def __init__(self, field: nn.Module, n_steps: int | None, times=(0.0, 1.0), **options) -> None:
        super().__init__()
        self.field = field
        self.times = list(times)
        self.options = {"n_steps": n_steps, **options}
        self.trajectory = len(self.times) > 2

    def forward(self, x: Tensor) -> Tensor:
        ys = odeint(self.field, x, self.times, **self.options)
        return ys if self.trajectory else ys[-1]


class ConvField(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.conv(x)) * torch.cos(t)


class FailsUnderExport(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_exporting():
            raise ValueError("cannot trace this")
        return x


class ExportDiffers(nn.Module):
    """Computes something else under export, so onnxruntime must disagree with eager torch."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0 if torch.compiler.is_exporting() else x


# -- the scan loops in eager mode give the Python loops' forward, to round-off ---------------------


@pytest.mark.parametrize(
    ("times", "steps", "eta", "pair"),
    [
        ([0.0, 1.0], (7,), 1.0, False),  # one interval
        ([0.0, 0.3, 1.0, 1.4], (4, 4, 4), 0.8, False),  # equal counts: nested scan
        ([1.0, 0.2, -0.5], (3, 6), 1.0, True),  # decreasing t, unequal counts, tuple state
    ],
)
def test_scan_forward_matches_python_forward(times, steps, eta, pair) -> None:
    field = Tanh(dim=3).double()  # no Python side effects: eager scan compiles its body
    y0 = torch.randn(5, 3, dtype=torch.float64)

    def func(t, y):
        return (field(t, y[0]), -y[1] * field(t, y[0])) if pair else field(t, y)

    state = (y0, 2 * y0) if pair else (y0,)
    bound = bind_field(func, tuple_state=pair, n_state=len(state), args=())
    scheme = ALF(eta)
    t = torch.tensor(times, dtype=torch.float64)
    with torch.no_grad():
        start = scheme.init(bound.field, t[0], state, bound.params)
        grid = UniformGrid(t, steps)
        want, want_final, _ = forward(
            PythonLoops(), scheme, bound.field, grid, start, bound.params, len(state)
        )
        got, got_final, _ = forward(
            ScanLoops(), scheme, bound.field, grid, start, bound.params, len(state)
        )
    assert [g.shape for g in got] == [(len(times), 5, 3)] * len(state)
    for a, b in zip((*want, *want_final), (*got, *got_final)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


# -- export, parity, graph size --------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[nn.Module, ExportReport]]:
    """One MLP model exported at several step counts (example batch 3, dynamic batch)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx")
    field = Tanh()
    models = {
        "5": Solve(field, 5),
        "60": Solve(field, 60, gradient="backprop"),
        "grid": Solve(field, 2, times=(0.0, 0.25, 0.5, 1.0), eta=0.9),
    }
    x = torch.randn(3, 4)
    return {k: (m, to_onnx(m, (x,), out / f"solve_{k}.onnx")) for k, m in models.items()}


@pytest.mark.parametrize("key", ["5", "60", "grid"])
@pytest.mark.parametrize("batch", [1, 37])
def test_onnxruntime_matches_torch(exported, key, batch) -> None:
    model, report = exported[key]
    assert report.checked and report.max_rel_error is not None
    assert report.max_rel_error <= 1e-4 and report.batches == (3, 1)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 4)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_graph_does_not_grow_with_steps(exported) -> None:
    small, large = exported["5"][1], exported["60"][1]
    assert small.loops == large.loops == 1
    assert small.nodes == large.nodes and small.total_nodes == large.total_nodes
    assert large.file_bytes <= 1.2 * small.file_bytes
    # Several output times still make one loop (one scan over all the steps), the solution at
    # the times in a carried buffer: three more top-level nodes (12 against 9) to build it.
    assert exported["grid"][1].loops == 1
    assert exported["grid"][1].nodes <= small.nodes + 3


def _metadata_keys(graph: onnx.GraphProto) -> set[str]:
    keys: set[str] = set()
    for node in graph.node:
        keys |= {p.key for p in node.metadata_props}
        for attribute in node.attribute:
            for body in (attribute.g, *attribute.graphs):
                keys |= _metadata_keys(body)
    return keys


@pytest.mark.parametrize("key", ["5", "grid"])
def test_the_file_carries_no_stack_traces_or_source_paths(exported, key) -> None:
    path = exported[key][1].path
    keys = _metadata_keys(onnx.load(str(path)).graph)
    assert "pkg.torch.onnx.fx_node" in keys  # the walk reaches the metadata that stays
    assert "pkg.torch.onnx.stack_trace" not in keys
    assert str(Path(mali_func.__file__).parent).encode() not in path.read_bytes()


def test_exported_graph_has_a_dynamic_batch_and_no_training_ops(exported) -> None:
    proto = onnx.load(str(exported["5"][1].path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {n.op_type for n in proto.graph.node}
    assert "Scan" in ops and not ops & {"Loop", "If", "SequenceConstruct"}


def test_conv_field_and_training_flag(tmp_path) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        Solve(ConvField(4), 8, times=(0.0, 0.5)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    model.train()
    report = to_onnx(model, torch.randn(2, 1, 6, 6), tmp_path / "conv.onnx", rtol=1e-5)
    assert model.training  # restored after export
    assert report.loops == 1 and report.max_rel_error is not None
    assert report.max_rel_error <= 1e-5
    assert "onnxruntime vs torch" in str(report)


@pytest.mark.skipif(not hasattr(mali_func, "ODEBlock"), reason="ODEBlock not available")
def test_odeblock_with_fixed_shapes_and_no_check(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(2, 4), mali_func.ODEBlock(Tanh(), n_steps=12))
    report = to_onnx(
        model,
        torch.randn(2, 2),
        tmp_path / "block.onnx",
        dynamic_batch=False,
        check=False,
        output_names=["y"],
    )
    assert report.loops == 1 and not report.checked and report.max_rel_error is None
    assert report.output_names == ("y",) and "skipped" in str(report)
    proto = onnx.load(str(report.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


# -- errors ---------------------------------------------------------------------------------------

X = torch.randn(2, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": lambda x: x}, TypeError, "model must be a torch.nn.Module"),
        ({"args": "x"}, TypeError, "args must be an example input tensor"),
        ({"args": ()}, TypeError, "args must be an example input tensor"),
        ({"args": (X, 3)}, TypeError, r"args\[1\] must be a torch.Tensor"),
        ({"args": (X, torch.randn(3, 4))}, ValueError, "same batch size"),
        ({"args": torch.tensor(1.0)}, ValueError, r"args\[0\] has no batch axis"),
        ({"path": 3}, TypeError, "path must be a str"),
        ({"path": "model.txt"}, ValueError, r"path must end in \.onnx"),
        ({"opset": 17}, ValueError, "opset must be at least 18"),
        ({"opset": "20"}, TypeError, "opset must be an int"),
        ({"rtol": 0.0}, ValueError, "rtol must be positive"),
        ({"rtol": float("nan")}, ValueError, "rtol must be positive"),
        ({"rtol": "1e-4"}, TypeError, "rtol must be a positive number"),
        ({"check": 1}, TypeError, "check must be True or False"),
        ({"dynamic_batch": "yes"}, TypeError, "dynamic_batch must be True or False"),
        ({"input_names": ["a", "b"]}, ValueError, "input_names must name each of the 1"),
        ({"output_names": "y"}, TypeError, "output_names must be a sequence of strings"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match) -> None:
    call = {"model": Solve(Tanh(), 2), "args": X, "path": tmp_path / "m.onnx", **kwargs}
    model, args, path = call.pop("model"), call.pop("args"), call.pop("path")
    with pytest.raises(error, match=match):
        to_onnx(model, args, path, **call)
    assert not (tmp_path / "m.onnx").exists()


def test_an_adaptive_alf_solve_exports_as_one_loop(tmp_path) -> None:
    # Without n_steps, odeint is adaptive: its controller exports as one ONNX Loop (the
    # adaptive classifiers are in tests/test_export_adaptive.py).
    report = to_onnx(Solve(Tanh(), None), X, tmp_path / "m.onnx")
    assert report.loops == 1 and report.max_rel_error < 1e-4


def test_export_failure_names_the_models_own_error(tmp_path) -> None:
    with pytest.raises(ExportError, match="could not export the model: ValueError: cannot trace"):
        to_onnx(FailsUnderExport(), X, tmp_path / "m.onnx")


def test_parity_failure_raises_with_the_figures(tmp_path) -> None:
    with pytest.raises(ParityError, match=r"max relative error 5\.\d+e-01 > rtol") as info:
        to_onnx(ExportDiffers(), torch.full((2, 3), 2.0), tmp_path / "bad.onnx")
    assert info.value.max_abs_error == pytest.approx(1.0)
    assert info.value.batch == 2 and info.value.output == 0
    assert isinstance(info.value, ExportError) and Path(info.value.path).is_file()


# -- command line and torch-free inference --------------------------------------------------------

FACTORY = """
import torch
from torch import nn
from mali_func import odeint


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.field = Field()
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        return self.head(odeint(self.field, x, [0.0, 1.0], n_steps=10)[-1])
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_cli_and_torch_free_inference(tmp_path) -> None:
    (tmp_path / "factory_mod.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    try:
        import factory_mod
    finally:
        sys.path.remove(str(tmp_path))
    model = factory_mod.Model()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    onnx_path = tmp_path / "out" / "model.onnx"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "mali_func.export",
            "factory_mod:Model",
            "--weights",
            str(tmp_path / "weights.pt"),
            "--input-shape",
            "2,3",
            "--output",
            str(onnx_path),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "onnx.checker (full) passed" in cli.stdout and "1 loop node" in cli.stdout

    # The example script runs with torch made unimportable.
    shim = tmp_path / "no_torch" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "onnx_inference.py"),
            str(onnx_path),
            "--input",
            str(tmp_path / "x.npy"),
            "--save-output",
            str(tmp_path / "y.npy"),
        ],
        env=_env(PYTHONPATH=str(shim.parent)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "predicted class per sample" in run.stdout
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()  # the CLI loaded these weights
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5)


def test_cli_rejects_bad_input(tmp_path, capsys) -> None:
    from mali_func.export._cli import main

    with pytest.raises(SystemExit) as info:
        main(["no_colon", "-s", "2,3", "-o", str(tmp_path / "m.onnx")])
    assert info.value.code == 2
    assert "module.path:callable" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["json:dumps", "-s", "2,x", "-o", str(tmp_path / "m.onnx")])
    assert "expected sizes like 1,1,8,8" in capsys.readouterr().err
    assert main(["json:JSONDecoder", "-s", "2,3", "-o", str(tmp_path / "m.onnx")]) == 1
    assert "must return a torch.nn.Module" in capsys.readouterr().err
