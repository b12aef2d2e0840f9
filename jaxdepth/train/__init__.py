"""Runnable programs of jaxdepth: python -m jaxdepth <command> ...

Each command is a module of this package with a main(argv) -> int (jaxdepth.train.fit
trains a zoo model with a recipe of jaxdepth/train/configs; jaxdepth.train.easier runs EASIER);
jaxdepth.train.__main__ dispatches to them and jaxdepth.train.command holds what they share
(settings, work directory, exit codes). The reusable pieces (steps, loop,
checkpoints, data, models) live in the rest of jaxdepth, which never imports
this package (as big_vision.train sits on big_vision). ``python -m jaxdepth``
(jaxdepth/__main__.py), the ``jaxdepth`` console script and
``python -m jaxdepth.train`` all run jaxdepth.train.__main__.main.
"""
