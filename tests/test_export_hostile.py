"""ONNX export under hostile inputs: colliding batch sizes, shapes without a batch axis, bad files.

Float32, small models. The export must never write a file whose batch axis differs from what the
report claims, and every failure must name the argument or file at fault, not crash raw.
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
from onnx import TensorProto, helper
from torch import Tensor, nn

from mali_func import ODEBlock
from mali_func.export import ExportError, to_onnx
from mali_func.export._batch import fixed_axes, has_dynamic_batch, trace_batches
from mali_func.export._cli import main
from mali_func.export._verify import check_file, compare, load_model, session

ROOT = Path(__file__).resolve().parents[1]


class Field(nn.Module):
    """``f(t, y) = Linear(16, 4)(tanh(Linear(4, 16)(y)))``: a state of width 4."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 16)
        self.l2 = nn.Linear(16, 4)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.l2(torch.tanh(self.l1(y)))


class PinsBatch(nn.Module):
    """Runs at any batch size, but turns the batch size into a Python number while tracing."""

    def forward(self, x: Tensor) -> Tensor:
        return x * float(x.shape[0])


def _first_axes(path: Path) -> list[str | int]:
    """The first axis of every graph input and output: a ``dim_param`` or a ``dim_value``."""
    proto = onnx.load(str(path))
    values = [*proto.graph.input, *proto.graph.output]
    return [
        v.type.tensor_type.shape.dim[0].dim_param or v.type.tensor_type.shape.dim[0].dim_value
        for v in values
    ]


# -- a batch size equal to another size of the model -----------------------------------------------


def test_batch_equal_to_the_state_width_still_gives_a_dynamic_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), ODEBlock(Field(), n_steps=5), ODEBlock(Field(), n_steps=5)
    )
    path = tmp_path / "collide.onnx"
    report = to_onnx(model, torch.randn(4, 3), path)  # batch 4 == state width 4
    assert report.dynamic_batch and report.checked and report.batches == (4, 1)
    assert report.max_rel_error is not None and report.max_rel_error <= 1e-4
    assert _first_axes(path) == ["batch", "batch"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (4, 7):
        x = torch.randn(batch, 3)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_batch_the_model_pins_is_refused_not_reported_dynamic(tmp_path) -> None:
    path = tmp_path / "pinned.onnx"
    with pytest.raises(ExportError, match=r"fixed shape \[4, 3\].*dynamic_batch=False"):
        to_onnx(PinsBatch(), torch.randn(4, 3), path, check=False)
    assert not path.exists()
    report = to_onnx(PinsBatch(), torch.randn(4, 3), path, dynamic_batch=False)
    assert not report.dynamic_batch and report.batches == (4,)
    assert _first_axes(path) == [4, 4]


def test_the_batch_is_traced_at_a_size_the_model_does_not_use() -> None:
    taken, observed = frozenset({2, 3, 4, 16}), frozenset({3, 4, 5, 16})
    assert trace_batches(4, taken, observed) == (6, 7)
    assert trace_batches(9, taken, observed) == (9, 6)
    assert trace_batches(1, frozenset(), frozenset({1})) == (2, 3)


def _value(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _identity(shape: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [_value("x", shape)],
        [_value("y", shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_the_files_axes_are_read_from_the_graph() -> None:
    fixed, dynamic = _identity([4, 3]), _identity(["batch", 3])
    assert not has_dynamic_batch(fixed) and has_dynamic_batch(dynamic)
    assert fixed_axes(fixed, 4) == [
        "input 'x' has the fixed shape [4, 3]",
        "output 'y' has the fixed shape [4, 3]",
    ]
    assert fixed_axes(dynamic, 3) == []
    # An output without a symbolic axis that has the traced size is the batch baked in.
    dynamic.graph.output[0].CopyFrom(_value("y", [5, 2]))
    assert fixed_axes(dynamic, 5) == ["output 'y' has the fixed shape [5, 2]"]
    assert fixed_axes(dynamic, 7) == []


def test_a_fixed_file_checked_at_another_batch_names_the_file(tmp_path) -> None:
    path = tmp_path / "fixed.onnx"
    onnx.save(_identity([4, 3]), str(path))
    with torch.no_grad(), pytest.raises(ExportError, match=r"cannot run .*fixed\.onnx.*\[1, 3\]"):
        compare(nn.Identity(), (torch.randn(4, 3),), path, rtol=1e-4, dynamic_batch=True)


def test_inputs_without_a_batch_axis_are_refused_before_export(tmp_path) -> None:
    # nn.Linear runs on one sample of shape (3,), but (1,) is no batch of it.
    with pytest.raises(ValueError, match=r"args: .*batch axis.*fails when it has 1 samples"):
        to_onnx(nn.Linear(3, 2), torch.randn(3), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# -- command line ----------------------------------------------------------------------------------

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
        return self.head(odeint(self.field, x, [0.0, 1.0], n_steps=4)[-1])


def flat():
    return nn.Sequential(nn.Linear(3, 4), nn.Flatten(), nn.Linear(4, 2))


def broken():
    raise KeyError("no such checkpoint")
"""


@pytest.fixture
def factory(tmp_path, monkeypatch) -> Path:
    (tmp_path / "hostile_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hostile_factory", raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "model_error"),
    [
        ("hostile_factory:Model", "RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        ("hostile_factory:flat", "IndexError: Dimension out of range"),
    ],
)
def test_cli_shape_without_the_batch_axis_names_the_argument(
    factory, capsys, spec, model_error
) -> None:
    out = factory / "m.onnx"
    with pytest.raises(SystemExit) as info:
        main([spec, "-s", "3", "-o", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument -s/--input-shape" in err and "shape 3" in err
    assert "must include the batch axis first" in err and "-s 1,3" in err
    assert model_error in err and "Traceback" not in err
    assert not out.exists()


def test_cli_bad_weights_and_failing_factory_are_errors(factory, capsys) -> None:
    junk = factory / "weights.pt"
    junk.write_bytes(b"not a checkpoint")
    out = str(factory / "m.onnx")
    assert main(["hostile_factory:Model", "-w", str(junk), "-s", "2,3", "-o", out]) == 1
    err = capsys.readouterr().err
    assert f"--weights: {junk} is not a state_dict file written by torch.save" in err
    assert "torch.save(model.state_dict(), path)" in err
    torch.save({"other.weight": torch.zeros(2)}, junk)
    assert main(["hostile_factory:Model", "-w", str(junk), "-s", "2,3", "-o", out]) == 1
    assert f"--weights: {junk} does not fit the factory's model" in capsys.readouterr().err
    assert main(["hostile_factory:broken", "-s", "2,3", "-o", out]) == 1
    assert "the factory broken raised KeyError" in capsys.readouterr().err


# -- corrupted files -------------------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    good = _identity(["batch", 3]).SerializeToString()
    files = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x08\xff\xff\xff not onnx at all",
        "empty": b"",
    }
    for name, data in files.items():
        (tmp_path / f"{name}.onnx").write_bytes(data)
    return {name: tmp_path / f"{name}.onnx" for name in files}


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_export_loaders_name_a_corrupted_file(bad_files, kind) -> None:
    path = bad_files[kind]
    for load in (session, check_file, load_model):
        with pytest.raises(ExportError, match=f"{kind}.onnx"):
            load(path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_inference_example_names_a_corrupted_file(bad_files, kind) -> None:
    path = bad_files[kind]
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "onnx_inference.py"), str(path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert f"cannot load {path} as an ONNX model" in run.stderr
    assert "Traceback" not in run.stderr


class CountingField(torch.nn.Module):
    """torchdiffeq's examples count evaluations in a plain attribute of the field."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return torch.tanh(self.lin(y))


def test_a_field_counting_its_calls_exports_and_keeps_counting(tmp_path) -> None:
    import mali_func
    from mali_func.export import to_onnx

    field = CountingField()
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), mali_func.ODEBlock(field, n_steps=4))
    report = to_onnx(model, (torch.randn(2, 3),), tmp_path / "m.onnx")
    assert report.max_rel_error < 1e-4
    assert type(field) is CountingField  # its own class back
    before = field.nfe
    model(torch.randn(2, 3))
    assert field.nfe == before + 7  # counting again: 4 steps, ALF's start, the end check (2)
