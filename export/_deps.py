"""The export's optional dependencies (the ``onnx`` extra), imported when a function needs them.

``import mali_func.export`` imports neither ``onnx`` nor ``onnxruntime``; the functions that read,
check or run an ONNX file import them on first use, and a missing one raises an
:class:`ImportError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL = "pip install 'mali-func[onnx]'"


def require(name: str) -> ModuleType:
    """``import name``, or an :class:`ImportError` naming the extra that provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"mali_func.export needs the {name!r} package for this; install the onnx extra: "
            f"{INSTALL}"
        ) from err
