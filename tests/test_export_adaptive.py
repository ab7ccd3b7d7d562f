"""Exporting every solve: adaptive steps as one ONNX ``Loop``, ``step_size`` blocks, and the
export package importing its optional dependencies only when an export runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from mali_func import ODEBlock, odeint
from mali_func.export import to_onnx


class Field(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, dim))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y) - 0.5 * y


def classifier(**block: object) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), ODEBlock(Field(), **block), nn.Linear(4, 2)).eval()


def run(path: Path, x: Tensor) -> Tensor:
    session = ort.InferenceSession(str(path))
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def loops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in ("Loop", "Scan")]


@pytest.fixture(scope="module")
def adaptive_files(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """The adaptive classifier exported at rtol 1e-3 and 1e-6 (each export takes seconds)."""
    files = {}
    for rtol in (1e-3, 1e-6):
        path = tmp_path_factory.mktemp("adaptive") / f"{rtol}.onnx"
        report = to_onnx(classifier(method="tsit5", rtol=rtol, atol=1e-6), (torch.randn(5, 3),),
                         path)  # fmt: skip
        assert report.max_abs_error < 1e-4
        files[rtol] = path
    return files


def test_an_adaptive_classifier_exports_as_one_loop_and_matches_torch(adaptive_files) -> None:
    model, path = classifier(method="tsit5", rtol=1e-3, atol=1e-6), adaptive_files[1e-3]
    assert loops(path) == ["Loop"]
    for batch in (1, 256):
        x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model(x)
        assert (run(path, x) - want).abs().max().item() < 1e-4


def test_the_file_does_not_grow_with_the_tolerance(adaptive_files) -> None:
    small, large = (adaptive_files[r].stat().st_size for r in (1e-3, 1e-6))
    assert abs(small - large) <= 0.01 * small


def test_a_step_size_block_exports_with_its_counts_fixed_when_built(tmp_path: Path) -> None:
    torch.manual_seed(0)
    block = ODEBlock(Field(2), t_eval=[0.3, 1.0], step_size=0.1, method="rk4").eval()
    x = torch.randn(4, 2)
    path = tmp_path / "step_size.onnx"
    to_onnx(block, (x,), path)
    with torch.no_grad():
        want = odeint(block.field, x, [0.0, 0.3, 1.0], n_steps=(3, 7), method="rk4")[1:]
    assert (run(path, x) - want).abs().max().item() < 1e-5


def test_step_size_with_t_an_input_is_refused_with_the_fix(tmp_path: Path) -> None:
    class TimeInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = Field(2)

        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return odeint(self.field, x, t, step_size=0.1, method="rk4")[-1]

    with pytest.raises(Exception, match=r"step_size needs the values of t.*ODEBlock"):
        to_onnx(TimeInput().eval(), (torch.randn(4, 2), torch.tensor([0.0, 1.0])),
                tmp_path / "t.onnx", dynamic_batch=False)  # fmt: skip


def test_step_counts_per_interval_equal_the_step_size_grid() -> None:
    torch.manual_seed(0)
    field, x = Field(2), torch.randn(4, 2)
    t = [0.0, 0.3, 1.0]
    want = odeint(field, x, t, step_size=0.1, method="rk4")
    torch.testing.assert_close(odeint(field, x, t, n_steps=(3, 7), method="rk4"), want)
    with pytest.raises(ValueError, match=r"one count per interval of t \(2\), got 3"):
        odeint(field, x, t, n_steps=(3, 7, 1), method="rk4")
    with pytest.raises(ValueError, match=r"n_steps\[1\] must be at least 1"):
        odeint(field, x, t, n_steps=[3, 0], method="rk4")


BLOCKED = (
    """
import sys
sys.modules["onnx"] = sys.modules["onnxruntime"] = None  # as if not installed
import torch
import mali_func.export as ex
"""
    + "\n".join(f"assert sys.modules['{name}'] is None" for name in ("onnx", "onnxruntime"))
    + """
try:
    ex.to_onnx(torch.nn.Linear(2, 2), (torch.randn(1, 2),), "never.onnx")
except ImportError as err:
    print("ERROR", err)
"""
)


def test_the_export_package_imports_onnx_only_when_an_export_runs() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ERROR" in out.stdout and "pip install 'mali-func[onnx]'" in out.stdout


# -- torch.export and AOTInductor packages --------------------------------------------------------


def test_a_plain_torch_export_of_an_ode_block_runs_like_the_model() -> None:
    model = classifier(n_steps=6)
    x = torch.randn(5, 3)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)


def test_an_adaptive_model_packages_runs_without_model_code_and_matches(tmp_path: Path) -> None:
    from mali_func.export import load_pt2, to_pt2

    # bosh3: AOTInductor's C++ build grows with the stages; the loop is the same for any pair.
    model = classifier(method="bosh3", coupling=None, rtol=1e-3, atol=1e-6)
    path = tmp_path / "model.pt2"
    report = to_pt2(model, (torch.randn(1, 3),), path)  # batch 1: traced at another size
    assert report.batches[0] == 1 and len(report.batches) == 2
    assert report.max_rel_error < 1e-4
    runner = load_pt2(path)
    x = torch.randn(64, 3)
    with torch.no_grad():
        assert (runner(x) - model(x)).abs().max().item() < 1e-4
    script = Path(__file__).parents[1] / "examples" / "pt2_inference.py"
    out = subprocess.run([sys.executable, str(script), str(path), "--shape", "3,3"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "predicted classes" in out.stdout
    wrong = subprocess.run([sys.executable, str(script), str(path), "--shape", "3,5"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "cannot run on an input of shape (3, 5)" in wrong.stderr


def test_a_truncated_package_is_named_not_a_native_crash(tmp_path: Path) -> None:
    from mali_func.export import ExportError, load_pt2

    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04 not really a package")
    with pytest.raises(ExportError, match=r"cannot load the \.pt2 package .*bad\.pt2"):
        load_pt2(bad)
    script = Path(__file__).parents[1] / "examples" / "pt2_inference.py"
    out = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode != 0 and "bad.pt2" in out.stderr and "Traceback" not in out.stderr


def test_the_onnx_inference_example_runs_an_adaptive_model(adaptive_files) -> None:
    script = Path(__file__).parents[1] / "examples" / "onnx_inference.py"
    out = subprocess.run([sys.executable, str(script), str(adaptive_files[1e-3])],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
