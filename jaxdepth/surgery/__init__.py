"""Surgery: rebuild a really shallower Flax model from collapsed parameters.

The five methods end with sites swapped for the identity (or whole blocks
dropped); their official code stops there, so the network is exactly as deep
and as slow as before. These passes turn such a network into a smaller
``(spec, variables)`` pair that computes the same function (``docs/surgery.md``):

=======================  ==========================================================
pass                     what it does
=======================  ==========================================================
:func:`fold_batchnorm`   BatchNorm (eval statistics) into the conv/dense before it
:func:`drop_noops`       identity sites and dropout go
:func:`merge_linear`     chains of affine ops become fewer ops where cheaper
:func:`fold_residuals`   a block with a linear branch becomes one op
:func:`crop_kernels`     kernel taps that read only padding go
:func:`cut_channels`     channels always OFF on the data go (with the next op's inputs)
:func:`remove_blocks`    identity-shortcut blocks become the identity (LaCoOT)
:func:`collapse`         all of them in a sensible order
=======================  ==========================================================

Each pass is a pure ``(spec, variables) -> (spec, variables)`` function that
first checks its arguments: a ``spec`` that is not a Spec is a ``TypeError``,
variables that do not fit it (made for another spec) a
:class:`~jaxdepth.checkpoint.SpecMismatchError` naming the node. A
``log`` list, when given, receives one :class:`Edit` per change, and one of
kind ``"skip"`` per merge not made, whose ``reason`` says why: an identity site
with nothing affine on one side, two ops whose merge is not exact at the
zero-padded border, a merge that would raise the cost. What is exact
and what is not: BatchNorm folding, dropping no-ops, dense and 1x1 merges,
residual folds and kernel crops are exact everywhere, and so is a biased 1x1
op before a padded conv once a small fixed border correction is added beside
the merged conv (MobileNetV2's inverted residuals); kxk∘kxk merges with
padding are exact only away from a border ring, so :func:`merge_linear` makes
them only with ``mode="interior"`` and records the ring
(:mod:`jaxdepth.surgery.merge`). Channel cuts are exact
on the data they were counted on. A rectifier after a residual addition (ResNet
``relu2``) set to the identity is dropped but not merged across:
:mod:`jaxdepth.surgery.residual` explains why. :mod:`jaxdepth.equivalence`
measures all of this.

Example::

    spec_id = jaxdepth.with_identity(spec, sites)     # what the papers time
    log = []
    shallow, shallow_vars = surgery.collapse(spec_id, variables, log=log)
    equivalence.compare(spec_id, variables, shallow, shallow_vars, x)
    surgery.summary(spec_id, shallow)   # layers removed, real depth, MACs, params
"""
from jaxdepth.surgery._tree import Edit
from jaxdepth.surgery.channels import cut_channels
from jaxdepth.surgery.cost import COSTS, measure_latency
from jaxdepth.surgery.fold_bn import fold_batchnorm
from jaxdepth.surgery.merge import MODES, crop_kernels, merge_linear
from jaxdepth.surgery.noops import drop_noops
from jaxdepth.surgery.pipeline import collapse, layers_removed, summary
from jaxdepth.surgery.residual import fold_residuals, remove_blocks

__all__ = ["Edit", "collapse", "fold_batchnorm", "drop_noops", "merge_linear",
           "fold_residuals", "crop_kernels", "cut_channels", "remove_blocks",
           "measure_latency", "MODES", "COSTS", "layers_removed", "summary"]
