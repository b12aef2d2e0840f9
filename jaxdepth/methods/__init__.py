"""Depth-reduction methods as small sets of pure functions (see :mod:`.base`).

* :mod:`.easier`: EASIER (Quétu et al., ECML PKDD 2024): the lowest-entropy
  rectifier becomes the identity, one per iteration.
* :mod:`.egp`: EGP (Liao et al., ICCVW 2023) and NEPENTHE (its journal
  extension): unstructured pruning guided by entropy x magnitude until layers
  reach zero entropy; :mod:`.egp_report` adds their sparsity figures and plots.
* :mod:`.lacoot`: LaCoOT (Quétu et al., ICCV 2025): train once with a
  max-sliced Wasserstein penalty between each residual block's input and
  output, then replace the closest blocks by the identity, no fine-tuning.
* :mod:`.tlc`: TLC (Quétu et al., AAAI 2025): every rectifier ranked by the loss
  its collapse costs on a validation batch; the cheapest go, with their
  mostly-OFF channels cut.

* :mod:`.conformance`: the checks :func:`jaxdepth.driver.run` makes of what a
  method's members return (a method of one's own is refused by the rule it breaks).

Each method module exposes its measuring and choosing steps as functions a
training loop of one's own can call, and a :class:`~jaxdepth.methods.base.Method`
object that :func:`jaxdepth.driver.run` iterates.
"""
from jaxdepth.methods import base, easier, egp, lacoot, tlc
from jaxdepth.methods.base import (
    Context, Decision, Method, Regularizer, TrainOptions, live_sites, removed_sites)
from jaxdepth.methods.easier import Easier
from jaxdepth.methods.egp import Egp, Nepenthe
from jaxdepth.methods.lacoot import LaCoOT
from jaxdepth.methods.tlc import TLC

__all__ = ["base", "easier", "egp", "lacoot", "tlc", "Context", "Decision", "Method",
           "Regularizer", "TrainOptions", "Easier", "Egp", "Nepenthe", "LaCoOT", "TLC",
           "live_sites", "removed_sites"]
