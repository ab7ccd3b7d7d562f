"""The gradient of a solve (internal): MALI's reverse pass, checkpointing, forward mode.

* :mod:`._solve`: the :class:`torch.autograd.Function` of a solve, the verified MALI backward and
  its fallback; :mod:`._passes` the forward and reverse passes over a grid;
* :mod:`._checkpoint`: ``gradient="checkpoint"`` (multi-level checkpointing);
* :mod:`._forward_mode`: forward-mode AD (``jvp``, ``jacfwd``) and the ``solve`` entry point;
* :mod:`._vjp`: the vector-Jacobian products of a step; :mod:`._drift` the reconstruction check,
  :class:`~mali_func.DriftMonitor` and the fallback's report.
"""
