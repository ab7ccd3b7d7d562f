"""How the loops of a solve run in each execution mode (internal).

* :mod:`._mode`: the execution mode (eager, ``torch.compile``, export) and host-read guards;
* :mod:`._loops`: the loop backends (Python loops eagerly and under :mod:`torch.func`,
  ``while_loop`` compiled), :mod:`._scan` the export backend (``scan``), :mod:`._flat` the flat
  carries they share;
* :mod:`._traced_transforms`: :mod:`torch.func` transforms inside ``torch.compile``;
* :mod:`._export_guard`: the forward-only mark on an exported adaptive solve.
"""
