"""Runnable programs of jaxdepth: ``python -m train <command> ...``.

Each command is a module of this package with a ``main(argv) -> int``
(:mod:`train.fit` trains a zoo model with a recipe of :mod:`train.configs`);
:mod:`train.__main__` dispatches to them. The reusable pieces (steps, loop,
checkpoints, data, models) live in :mod:`jaxdepth`.
"""
