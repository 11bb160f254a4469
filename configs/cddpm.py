r"""cDDPM: the DDPM conditioned on an encoding of the input slice.

  python -m experiments.main --config=configs/cddpm.py:cpu --workdir=runs/cddpm_cpu
  python -m experiments.main --config=configs/cddpm.py:cpu --workdir=runs/cddpm_cpu --mode=detect
  python -m experiments.main --config=configs/cddpm.py --workdir=runs/cddpm   # 128 px, GPU/TPU

Everything is configs/ddpm.py's (same variants, UNet, schedule, optimiser),
plus the image encoder (config.model.encoder_channels, latent_dim,
cond_dropout) and the paper's reconstruction: one-step x0 estimates from
t = 250, 500 and 750, averaged (genjax/methods/cddpm.py).
"""

from configs import ddpm


def get_config(arg=None):
  config = ddpm.get_config(arg)
  variant = config.variant
  config.method = "cddpm"
  pick = lambda research, cpu, smoke: {"": research, "cpu": cpu,
                                       "smoke": smoke}[variant]
  model = config.model
  # Strided conv levels of the encoder (each halves the slice), then a
  # global mean and a Dense to latent_dim. The paper's encoder gives 128.
  model.encoder_channels = pick((32, 64, 128, 256), (16, 32, 64), (8, 16))
  model.latent_dim = pick(128, 64, 16)
  # Fraction of training examples whose condition is zeroed, so that the
  # network also denoises without one (sampling from noise has no input).
  model.cond_dropout = 0.1

  anomaly = config.anomaly
  anomaly.sampler = "one_step"
  anomaly.noise_levels = (250, 500, 750)
  return config
