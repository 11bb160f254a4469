"""The intensity-threshold floor: lesions as the brightest (or darkest) pixels.

Every brain-MRI anomaly-detection paper shows this baseline beside its
methods (e.g. Meissen et al. 2021, "Challenging current semi-supervised
anomaly segmentation methods for brain MRI"): on FLAIR and T2 many lesions
are simply hyperintense, so thresholding the normalised intensity itself
detects them. A method that does not beat it has learned nothing about
anatomy.

Through the method interface the floor is a method whose pseudo-healthy
"reconstruction" is a constant image at the far end of the intensity range:
-1 (black) when lesions are hyperintense (`floor.sign = 'hyper'`: FLAIR, T2,
PD), +1 (white) when they are hypointense ('hypo': T1, the phantom's
stroke lesions). The one detector's residual |x - reconstruction| is then
x + 1 or 1 - x, in [0, 2], i.e. the (sign-flipped) normalised intensity,
and goes through the same brain mask, median filter, thresholds and
metrics as every other method's residual.

It has no parameters and needs no training: `trainable` is False, and
--mode=detect runs it from `init` without a checkpoint. It cannot sample,
so --mode=eval and --mode=sample are errors.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from genjax.methods import Method

SIGNS = {"hyper": -1.0, "hypo": 1.0}  # sign -> the constant reconstruction.


class State(NamedTuple):
  step: jax.Array


def validate(config):
  from genjax import config as config_lib  # pylint: disable=g-import-not-at-top
  sign = config.floor.sign
  if sign not in SIGNS:
    raise config_lib.ConfigError(
        f"config.floor.sign: {sign!r} is not one of {', '.join(SIGNS)} "
        "('hyper': lesions brighter than tissue, as on FLAIR/T2; 'hypo': "
        "darker, as on T1).")


def make(config):
  """The intensity floor as a `Method` (see genjax.methods)."""
  level = SIGNS[config.floor.sign]

  def init(rng, batch):
    del rng, batch
    return State(step=jnp.zeros((), jnp.int32))

  def train_step(state, batch, rng):
    raise ValueError(
        "config.method='floor' has nothing to train: run --mode=detect "
        "directly.")

  def sample(state, rng, n):
    raise ValueError("The intensity floor is not a generative model: it "
                     "cannot sample.")

  def reconstruct(state, images, rng):
    del state, rng
    return jnp.full_like(images, level)

  reconstruct.network_calls = 0  # No network: the detector's cost column.

  return Method(init=init, train_step=train_step, sample=sample,
                reconstruct=reconstruct, trainable=False)
