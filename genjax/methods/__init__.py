"""The method interface and the registry keyed by `config.method`.

Every generative method is one module here with `make(config) -> Method`:
pure functions over an explicit state pytree, so that one training loop, one
evaluator and one anomaly detector serve them all.

  init(rng, batch) -> state                       # params, optimiser state(s), EMA, step
  train_step(state, batch, rng) -> (state, metrics)  # pure; the loop jits and donates state
  sample(state, rng, n) -> images [n, H, W, 1] in [-1, 1]
  reconstruct(state, images, rng) -> images       # pseudo-healthy reconstruction
  anomaly_score(state, images, recon[, rng]) -> optional  # a method's own score
                                  # (f-AnoGAN); may also return 'reconstruction'
  reported(step, name) -> bool   optional           # which metrics a step logs
  trainable: bool                optional, True     # False: no checkpoint (the floor)
  generate(state, rng, condition, guidance_scale[, known]) -> images
                                 optional           # conditional sampling
                                  # (lesion_ddpm): `condition` a batch dict
                                  # of n examples (e.g. 'mask'), guided as
                                  # u + s (c - u); `known` = (x, keep)
                                  # inpaints, keeping x where keep = 1

`batch` is a dict of arrays: image [B, H, W, 1] in [-1, 1], mask, brain
[B, H, W, 1] in {0, 1}, label [B]. `state` must carry an integer `step`.
A new method is one module and one config; add its name below.

Two settings of config.train every method honours, so that the loop stays
generic:

  compute_dtype     the dtype of the networks' activations ('float32' or
                    'bfloat16', `genjax.config.compute_dtype`): pass it as the
                    Flax modules' `dtype`; parameters and optimiser state stay
                    float32, network outputs are cast to float32 before losses.
  grad_accum_steps  k: `train_step` gets the whole global batch and makes ONE
                    update from it, computing its gradients with
                    `genjax.optim.accumulate_gradients` (the mean over k
                    micro-batches, run one after another), then applying its
                    optimiser(s) and EMA once. `step`, schedules and EMA thus
                    count updates, never micro-batches. (A wrapper in the loop
                    around `train_step`, e.g. optax.MultiSteps, cannot do this
                    without knowing each method's state: it would advance
                    `step` and the EMA k times per update and, for the GAN,
                    compute G's gradients against a D not yet updated.)
"""

import importlib
from typing import Any, Callable, NamedTuple, Optional

_METHODS = {
    "autoddpm": "genjax.methods.autoddpm",
    "cddpm": "genjax.methods.cddpm",
    "ddpm": "genjax.methods.ddpm",
    "floor": "genjax.methods.floor",
    "gan": "genjax.methods.gan",
    "lesion_ddpm": "genjax.methods.lesion_ddpm",
    "lesion_vae": "genjax.methods.lesion_vae",
    "pddpm": "genjax.methods.pddpm",
    "vae": "genjax.methods.vae",
}


class Method(NamedTuple):
  init: Callable[..., Any]
  train_step: Callable[..., Any]
  sample: Callable[..., Any]
  reconstruct: Callable[..., Any]
  # Optional: {'pixel': [B,H,W,1], 'slice': [B]} (or one of them) that the
  # anomaly detector uses instead of |x - reconstruct(x)|.
  anomaly_score: Optional[Callable[..., Any]] = None
  # Optional: reported(step, name) -> bool, whether metric `name` of the
  # train_step made at (pre-update) `step` means anything. The loop logs
  # each metric's mean over the steps that report it, and nothing for a
  # window where none does (e.g. the GAN's D loss once only its encoder
  # trains). Default: every metric, every step.
  reported: Optional[Callable[[int, str], bool]] = None
  # False for a method with nothing to learn (the intensity floor): detect
  # starts from `init` instead of a checkpoint, and train refuses.
  trainable: bool = True
  # Optional: generate(state, rng, condition, guidance_scale=1.0, known=None)
  # -> [n, H, W, 1] in [-1, 1]: samples given a condition (a batch dict of n
  # examples holding what the method conditions on, e.g. a lesion 'mask'),
  # with classifier-free guidance scale s (1: the conditional model, 0: the
  # unconditional one); `known` = (x_known, keep) inpaints, the output
  # equalling x_known exactly where keep = 1. None: the method samples only
  # unconditionally.
  generate: Optional[Callable[..., Any]] = None


def names():
  return tuple(sorted(_METHODS))


def _module(config):
  if config.method not in _METHODS:
    raise ValueError(f"config.method={config.method!r} is not one of: "
                     f"{', '.join(names())}.")
  return importlib.import_module(_METHODS[config.method])


def validate(config):
  """Runs the method's own config checks (`validate(config)`), if it has any.

  They catch what only the method knows (e.g. an image size the network
  cannot downsample) before any data is built or code compiled.
  """
  check = getattr(_module(config), "validate", None)
  if check is not None:
    check(config)


def get(config) -> Method:
  """Builds the method named by `config.method`."""
  return _module(config).make(config)
