"""Runnable programs of jaxdepth: python -m train <command> ...

Each command is a module of this package with a main(argv) -> int (train.fit
trains a zoo model with a recipe of train/configs; train.easier runs EASIER);
train.__main__ dispatches to them and train.command holds what they share
(settings, work directory, exit codes). The reusable pieces (steps, loop,
checkpoints, data, models) live in jaxdepth.
"""
