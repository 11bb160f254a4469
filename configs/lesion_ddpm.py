r"""Lesion-conditioned DDPM: synthesise pathology where a mask says.

  python -m experiments.main --config=configs/lesion_ddpm.py:cpu --workdir=runs/lesion_cpu
  python -m experiments.synthesize --config=configs/lesion_ddpm.py:cpu \
      --workdir=runs/lesion_cpu --mode=generate --masks_from=phantom --out=runs/lesion_cpu/generate
  python -m experiments.synthesize --config=configs/lesion_ddpm.py:cpu \
      --workdir=runs/lesion_cpu --mode=paint --masks_from=test --out=runs/lesion_cpu/paint

Everything is configs/ddpm.py's (same variants, UNet, schedule, optimiser),
plus the mask and healthy-context conditioning with condition dropout
(genjax/methods/lesion_ddpm.py), trained on the split with lesions
(data.train_split='train_mixed', lesion slices oversampled to half of each
batch), and the default classifier-free guidance scale of
experiments/synthesize.py (sample.guidance_scale).
"""

from configs import ddpm


def get_config(arg=None):
  config = ddpm.get_config(arg)
  config.method = "lesion_ddpm"
  # Healthy and lesion slices; half of every batch has a lesion, so the
  # conditional model sees masks of every size often.
  config.data.train_split = "train_mixed"
  config.data.lesion_fraction = 0.5

  model = config.model
  # Fraction of training examples with no condition at all (mask and context
  # zeros, flags 0): the unconditional model that guidance contrasts with.
  model.cond_dropout = 0.1
  # Of the other examples, the fraction that sees the mask only (no healthy
  # context): the model that generates a whole slice around a mask.
  model.context_dropout = 0.5

  # experiments/synthesize.py's default --guidance: u + s (c - u); 1 is the
  # conditional model, 0 the unconditional one.
  config.sample.guidance_scale = 2.0
  return config
