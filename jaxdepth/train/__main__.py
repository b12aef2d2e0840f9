"""python -m jaxdepth <command> [options]: dispatches to the command's module.

Adding a method is one line in COMMANDS: its module has a
main(argv: list[str]) -> int built on jaxdepth.train.command, and its configs are the
jaxdepth/train/configs/<command>_*.py files (python -m jaxdepth list finds them).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "fit": ("jaxdepth.train.fit", "train a zoo model on a dataset with a recipe of jaxdepth/train/configs/"),
    "easier": ("jaxdepth.train.easier", "EASIER: the lowest-entropy activation becomes the identity, one per iteration"),
    "egp": ("jaxdepth.train.egp", "EGP: prune weights where entropy x magnitude is low until layers collapse"),
    "nepenthe": ("jaxdepth.train.nepenthe", "NEPENTHE: EGP's loop with the dataset-level entropy"),
    "lacoot": ("jaxdepth.train.lacoot", "LaCoOT: train once with a Wasserstein penalty, then drop the closest residual blocks"),
    "tlc": ("jaxdepth.train.tlc", "TLC: the activations whose collapse costs least on a validation batch become identities"),
}


def usage() -> str:
  lines = ["usage: python -m jaxdepth <command> [options]   (python -m jaxdepth <command> --help)",
           "       python -m jaxdepth list                  (configs, models and datasets)",
           "", "commands:"]
  lines += [f"  {name:10s} {help_}" for name, (_, help_) in COMMANDS.items()]
  lines += [f"  {'list':10s} the configs of each command with one line each, the models, "
            f"the datasets"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command in ("list", "--list"):
    from jaxdepth.train import command as command_lib  # pylint: disable=import-outside-toplevel
    print(command_lib.listing(COMMANDS))
    return 0
  if command not in COMMANDS:
    print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2
  return importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
  sys.exit(main())
