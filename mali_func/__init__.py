"""mali-func: Neural ODEs with MALI, the memory-efficient, reverse-accurate ALF integrator.

Zhuang, Dvornek, Tatikonda and Duncan, "MALI: A memory efficient and reverse accurate integrator
for Neural ODEs", ICLR 2021. The asynchronous leapfrog (ALF) step is algebraically invertible, so
the backward pass rebuilds the forward trajectory in reverse time instead of storing it: memory is
constant in the number of steps and the gradient is that of the discrete forward solve.
"""

from ._blocks import ODEBlock
from ._odeint import odeint
from .field._callbacks import CallbackWarning
from .gradients._drift import (
    DriftMonitor,
    FallbackWarning,
    ReconstructionWarning,
)
from .gradients._strategies import MALI, Backprop, Checkpoint
from .interop._odeint_adjoint import odeint_adjoint
from .interop._odeint_event import odeint_event
from .interop._privacy import DPODEBlock, prepare_for_opacus
from .schemes import ALF, ButcherTableau, CoupledRK, ReversibleHeun, ReversibleScheme, RungeKutta
from .stepping._controllers import Controller, IntegralController
from .stepping._parasitic import CouplingWarning, ParasiticModeWarning
from .stepping._stats import SolveStats
from .stepping._steps import Adaptive, Fixed

__all__ = [
    "ALF",
    "MALI",
    "Adaptive",
    "Backprop",
    "Checkpoint",
    "Fixed",
    "ButcherTableau",
    "Controller",
    "CoupledRK",
    "CallbackWarning",
    "CouplingWarning",
    "DPODEBlock",
    "DriftMonitor",
    "FallbackWarning",
    "IntegralController",
    "ODEBlock",
    "ParasiticModeWarning",
    "ReconstructionWarning",
    "ReversibleHeun",
    "ReversibleScheme",
    "RungeKutta",
    "SolveStats",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "prepare_for_opacus",
]
__version__ = "0.1.0"
