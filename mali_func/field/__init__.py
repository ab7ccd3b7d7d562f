"""The user's field (internal): binding it to a solve and checking what it reads and changes.

* :mod:`._field`: binding a module or callable (and its ``args``) into a pure field;
* :mod:`._captures`: refusing tensors a callable closes over that need a gradient;
* :mod:`._module_checks`: refusing hidden inputs and attributes of a module field;
* :mod:`._module_state`: fields with state (``spectral_norm``, buffers changed in place).
"""
