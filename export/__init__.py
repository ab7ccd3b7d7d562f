"""ONNX export of models that integrate with :func:`mali_func.odeint` (``mali_func.export``).

:func:`to_onnx` traces a model with ``torch.onnx.export(dynamo=True)`` in eval mode without
autograd. Under export, ``odeint`` runs its forward-only ``scan`` path, so each solve becomes one
ONNX ``Scan`` node whose body is a single step: the file does not grow with the number of steps,
and none of MALI's training machinery is in it. The file is then checked with the full ONNX
checker and run in onnxruntime against torch.

Command line: ``python -m mali_func.export --help``. Importing this package imports neither
``onnx`` nor ``onnxruntime``: they are imported when an export runs, and a missing one raises an
:class:`ImportError` naming the extra (``pip install 'mali-func[onnx]'``).
"""

from ._api import to_onnx
from ._errors import ExportError, ParityError
from ._report import ExportReport

__all__ = ["ExportError", "ExportReport", "ParityError", "to_onnx"]
