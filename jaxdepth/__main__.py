"""``python -m jaxdepth <command> [options]``: the programs of :mod:`jaxdepth.train`.

Kept tiny: ``import jaxdepth`` is lazy, and the command's module loads what it uses.
"""
import sys

from jaxdepth.train.__main__ import main

if __name__ == "__main__":
  sys.exit(main())
