"""The README's own module ``MyNet`` as the source of a model file (``--model file.py:MyNet``)."""

MYNET = """
import flax.linen as nn, jax.numpy as jnp

class MyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), padding="SAME")(x))
    x = nn.silu(x)
    x = jnp.concatenate([x, nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))], axis=-1)
    return nn.Dense(10)(x.mean(axis=(1, 2)))
"""
