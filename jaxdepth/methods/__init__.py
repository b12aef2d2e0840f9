"""Depth-reduction methods as small sets of pure functions (see :mod:`.base`).

* :mod:`.easier`: EASIER (Quétu et al., ECML PKDD 2024): the lowest-entropy
  rectifier becomes the identity, one per iteration.
* :mod:`.tlc`: TLC (Quétu et al., AAAI 2025): every rectifier ranked by the loss
  its collapse costs on a validation batch; the cheapest go, with their
  mostly-OFF channels cut.

Each method module exposes its measuring and choosing steps as functions a
training loop of one's own can call, and a :class:`~jaxdepth.methods.base.Method`
object that :func:`jaxdepth.driver.run` iterates.
"""
from jaxdepth.methods import base, easier, tlc
from jaxdepth.methods.base import (
    Context, Decision, Method, Regularizer, TrainOptions, live_sites, removed_sites)
from jaxdepth.methods.easier import Easier
from jaxdepth.methods.tlc import TLC

__all__ = ["base", "easier", "Context", "Decision", "Method", "Regularizer", "TrainOptions",
           "Easier", "TLC", "tlc", "live_sites", "removed_sites"]
