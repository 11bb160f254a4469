r"""A GAN on brain MRI slices, with an f-AnoGAN encoder for reconstruction.

  python -m experiments.main --config=configs/gan.py:cpu --workdir=runs/gan_cpu
  python -m experiments.main --config=configs/gan.py:cpu --workdir=runs/gan_cpu --mode=sample
  python -m experiments.main --config=configs/gan.py --workdir=runs/gan   # 128 px, GPU/TPU

Training has two phases in one run (one loop, one `train.num_steps`):
steps [0, gan.gan_steps) train the generator and discriminator; steps
[gan.gan_steps, gan.gan_steps + gan.encoder_steps) train the encoder (izi_f)
with both frozen. `train.num_steps` follows the two, so
`--config.gan.gan_steps=...` is all it takes to change the length (setting
`train.num_steps` itself only stops the run earlier or later; the phase
boundary stays at gan.gan_steps).

Variants: none = research scale (128 px, ResNet G/D, non-saturating loss +
R1, 100k + 20k steps), `:cpu` (64 px DCGAN with a spectrally normalised
hinge discriminator, 2000 GAN + 500 encoder steps at batch 32: about 20
minutes on 2 CPU cores), `:smoke` (32 px, seconds; the tests use it).

Measured for `:cpu` (2 shared CPU cores, load average 5-6 from other jobs;
median of 10 jitted steps after compilation): 0.47 s per GAN step, 0.42 s
per encoder step, so 2000 x 0.47 + 500 x 0.42 = 19 min, plus about a minute
of compilation, checkpoints and sample grids. After 200-400 GAN steps the
samples are already brain-shaped (midline, ventricles).

Watch, in TensorBoard: d_real and d_fake (mean logits; they should stay apart
but not diverge), d_grad_norm / g_grad_norm, and in phase 2 e_loss falling.
"""

import ml_collections
from ml_collections import config_dict

from configs import base


def get_config(arg=None):
  config = base.get_base_config(arg)
  variant = config.variant
  config.method = "gan"
  pick = lambda research, cpu, smoke: {"": research, "cpu": cpu,
                                       "smoke": smoke}[variant]

  config.train.batch_size = pick(64, 32, 4)

  # Networks (genjax.nn.gan). Level l runs at image_size / 2^l with
  # min(base * 2^l, max_channels) channels, down to a 4x4 bottleneck.
  config.model = model = ml_collections.ConfigDict()
  model.arch = pick("resnet", "dcgan", "dcgan")  # 'dcgan' or 'resnet'.
  model.z_dim = pick(128, 64, 16)
  model.g_channels = pick(64, 8, 8)
  model.d_channels = pick(64, 16, 8)
  model.e_channels = pick(64, 16, 8)
  model.max_channels = pick(512, 128, 32)
  model.g_norm = "group"  # 'group' or 'none'.
  model.num_groups = 8
  model.spectral_norm = pick(False, True, True)  # Discriminator only.

  # The adversarial game and the encoder phase.
  config.gan = gan = ml_collections.ConfigDict()
  # 'nonsaturating' (-log D(G(z)) for G), 'hinge' or 'wgan_gp' (needs
  # gp_weight > 0).
  gan.loss = pick("nonsaturating", "hinge", "hinge")
  gan.gp_weight = 0.0  # WGAN-GP lambda (10 is the paper's); any loss.
  gan.r1_gamma = pick(1.0, 0.0, 0.0)  # R1: gamma/2 E||grad D(real)||^2.
  # Discriminator updates per generator update (each on the same real batch
  # with fresh noise).
  gan.n_critic = 1
  gan.ema_decay = pick(0.999, 0.995, 0.9)  # EMA generator (sampling).
  gan.gan_steps = config_dict.FieldReference(pick(100_000, 2000, 3))
  gan.encoder_steps = config_dict.FieldReference(pick(20_000, 500, 2))
  gan.kappa = 1.0  # izi_f: weight of the discriminator-feature residual.
  config.train.num_steps = gan.get_ref("gan_steps") + gan.get_ref(
      "encoder_steps")

  # Three optimisers (genjax.optim.make_optimizer). TTUR: D learns faster.
  def optimizer(lr, b1, b2, warmup):
    o = ml_collections.ConfigDict()
    o.learning_rate = lr
    o.warmup_steps = warmup
    o.schedule = "constant"
    o.decay_steps = 1
    o.b1, o.b2 = b1, b2
    o.weight_decay = 0.0
    o.grad_clip = 0.0  # 0: off. GAN gradients are regulated by SN/penalties.
    return o
  # Adam b1 = 0 (SNGAN, StyleGAN) at scale; 0.5 (DCGAN) for the short runs.
  config.optim_g = optimizer(pick(1e-4, 2e-4, 2e-4), pick(0.0, 0.5, 0.5),
                             pick(0.99, 0.999, 0.999), 0)
  config.optim_d = optimizer(pick(4e-4, 4e-4, 4e-4), pick(0.0, 0.5, 0.5),
                             pick(0.99, 0.999, 0.999), 0)
  config.optim_e = optimizer(pick(1e-4, 1e-3, 1e-3), 0.9, 0.999,
                             pick(1000, 50, 0))

  config.sample = sample = ml_collections.ConfigDict()
  sample.num_samples = pick(64, 16, 4)

  # Slice-level anomaly score: f-AnoGAN's A(x) = mean squared pixel residual
  # + feature_weight * mean squared discriminator-feature residual (True), or
  # the detector's own score of the residual map (False). Pixel maps are
  # |x - G(E(x))| either way.
  config.anomaly.fanogan_score = True
  config.anomaly.feature_weight = 1.0
  return config
