r"""Mask-conditioned VAE: the classic comparison for lesion synthesis.

  python -m experiments.main --config=configs/lesion_vae.py:cpu --workdir=runs/lesion_vae_cpu
  python -m experiments.synthesize --config=configs/lesion_vae.py:cpu \
      --workdir=runs/lesion_vae_cpu --mode=generate --masks_from=phantom
  python -m experiments.synthesize --config=configs/lesion_vae.py:cpu \
      --workdir=runs/lesion_vae_cpu --mode=paint --masks_from=test

Everything is configs/vae.py's (same variants '', 'cpu', 'smoke', network,
objective switches and optimiser), plus the mask and healthy-context
conditioning with context dropout (genjax/methods/lesion_vae.py), trained
on the split with lesions (data.train_split='train_mixed', lesion slices
oversampled to half of each batch) like configs/lesion_ddpm.py. The guidance
scale is 1: the VAE has no classifier-free guidance.
"""

from configs import vae


def get_config(arg=None):
  config = vae.get_config(arg)
  config.method = "lesion_vae"
  # Healthy and lesion slices; half of every batch has a lesion, so the
  # conditional model sees masks of every size often.
  config.data.train_split = "train_mixed"
  config.data.lesion_fraction = 0.5

  # Fraction of training examples that see the mask only (no healthy
  # context): the model that generates a whole slice around a mask; the
  # others learn to paint into a given slice.
  config.model.context_dropout = 0.5

  # `generate` decodes z ~ N(0, I), the prior of the ELBO ('aggregate': a
  # Gaussian fitted to q(z), see configs/vae.py, for prior holes).
  config.sample.prior = "standard"
  # experiments/synthesize.py's default --guidance; a VAE accepts only 1.
  config.sample.guidance_scale = 1.0
  return config
