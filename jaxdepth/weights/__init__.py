"""Pretrained weights: PyTorch state dicts read from safetensors (or ``.pth`` with torch)
and placed on jaxdepth variables by a name map.

:mod:`jaxdepth.weights.state_dict` is the generic part (reading, name maps,
layout transforms, one error type); :mod:`jaxdepth.weights.torchvision` holds
the name maps of torchvision's ResNet-18, MobileNetV2, VGG-16-bn and Swin-T.
"""
from jaxdepth.weights.state_dict import (
    StateDictError, Target, as_is, assign, conv_kernel, dense_kernel, read_state_dict)

__all__ = ["StateDictError", "Target", "as_is", "assign", "conv_kernel", "dense_kernel",
           "read_state_dict"]
