"""Where the steps go (internal): grids, step-size control and the checks of a forward solve.

* :mod:`._grid`: fixed grids (per interval, or flattened) and the recorded steps of an adaptive
  solve;
* :mod:`._control`: the adaptive controller loop; :mod:`._stats` :class:`~mali_func.SolveStats`;
  :mod:`._failure` the error of a failed eager solve;
  :mod:`._controllers` the error norm, the first step and the controllers;
* :mod:`._blowup`: detection of a solve that blows up;
* :mod:`._parasitic`: the size of a scheme's parasitic mode
  (:class:`~mali_func.ParasiticModeWarning`).
"""
