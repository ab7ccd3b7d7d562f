"""Entry point of ``python -m mali_func.export``; see :mod:`mali_func.export._cli`."""

from ._cli import main

raise SystemExit(main())
