"""ONNX export of mali-func's forward integration (imported as ``mali_func.export``).

The exporter lands with the ONNX export issue; this package is wired in already so that
``import mali_func.export`` works from an installed checkout.
"""

__all__: list[str] = []
