"""Deployment of models that integrate with :func:`mali_func.odeint` (``mali_func.export``).

:func:`to_onnx` traces a model with ``torch.onnx.export(dynamo=True)`` in eval mode without
autograd. Under export, ``odeint`` runs its forward-only path: a fixed grid is one ONNX ``Scan``
node whose body is a single step, an adaptive solve one ``Loop`` node holding the step-size
control, so the file does not grow with the number of steps or the tolerance, and none of MALI's
training machinery is in it. The file is then checked with the full ONNX checker and run in
onnxruntime against torch. :func:`to_pt2` writes the same programs as an AOTInductor ``.pt2``
package (``torch.export``), which :func:`load_pt2` (or ``torch._inductor.aoti_load_package``)
runs with torch alone.

Command line: ``python -m mali_func.export --help``. Importing this package imports neither
``onnx`` nor ``onnxruntime``: they are imported when an export runs, and a missing one raises an
:class:`ImportError` naming the extra (``pip install 'mali-func[onnx]'``).
"""

from ._api import to_onnx
from ._errors import ExportError, ParityError
from ._pt2 import Pt2Report, load_pt2, to_pt2
from ._report import ExportReport

__all__ = [
    "ExportError",
    "ExportReport",
    "ParityError",
    "Pt2Report",
    "load_pt2",
    "to_onnx",
    "to_pt2",
]
