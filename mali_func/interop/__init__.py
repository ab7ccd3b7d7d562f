"""Other libraries' interfaces (internal): torchdiffeq's signature and Opacus.

* :mod:`._compat`: torchdiffeq's ``method``/``options`` translated into ours;
* :mod:`._odeint_adjoint`: :func:`~mali_func.odeint_adjoint`, the drop-in for torchdiffeq's;
* :mod:`._privacy`: :class:`~mali_func.DPODEBlock` and :func:`~mali_func.prepare_for_opacus`.
"""
