"""``python -m jaxdepth nepenthe``: EGP's loop with NEPENTHE's dataset-level entropy (see :mod:`jaxdepth.train.egp`)."""
from __future__ import annotations

import sys

from jaxdepth.train import egp


def main(argv: list[str] | None = None) -> int:
  return egp.main(argv, name="nepenthe")


if __name__ == "__main__":
  sys.exit(main())
