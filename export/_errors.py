"""The errors :func:`mali_func.export.to_onnx` raises after its argument checks."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The model could not be exported, or the written file failed the ONNX checker."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch's by more than the allowed relative error.

    Attributes:
        path: the ONNX file that was written (kept, for inspection).
        batch: the batch size at which the comparison failed.
        output: index of the first failing output among the model's flattened outputs.
        max_rel_error: its error, relative to the largest magnitude of torch's output.
        max_abs_error: its largest absolute error.
        rtol: the allowed relative error.
    """

    def __init__(
        self,
        *,
        path: str,
        batch: int | None,
        output: int,
        max_rel_error: float,
        max_abs_error: float,
        rtol: float,
        detail: str = "",
    ) -> None:
        self.path = path
        self.batch = batch
        self.output = output
        self.max_rel_error = max_rel_error
        self.max_abs_error = max_abs_error
        self.rtol = rtol
        where = "" if batch is None else f" at batch size {batch}"
        super().__init__(
            f"onnxruntime disagrees with torch on output {output}{where}: max relative error "
            f"{max_rel_error:.3e} > rtol {rtol:.3e} (max absolute error {max_abs_error:.3e})"
            + (f"; {detail}" if detail else "")
            + f"; the file was kept at {path}"
        )
