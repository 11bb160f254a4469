r"""Variational autoencoder on brain MRI slices; the report's fixes are switches.

  python -m experiments.main --config=configs/vae.py:cpu --workdir=runs/vae_cpu
  python -m experiments.main --config=configs/vae.py:cpu --workdir=runs/vae_cpu --mode=sample
  python -m experiments.main --config=configs/vae.py --workdir=runs/vae   # 128 px, GPU/TPU

Variants: none = research scale (128 px, 4 levels, dense 256-d latent),
`:cpu` (64 px, a 0.93M-parameter VAE at batch 32, 2000 steps: a step
costs 0.49 CPU-seconds, ~0.25-0.3 s on 2 idle cores, so about 10 minutes;
0.72 s a step measured with the 2 cores shared at load average 5.5;
`jit(train_step)` on zeros),
`:smoke` (32 px, seconds; the tests use it).

The report's fixes for blur and healthy bias, each one switch (defaults off):

  --config.augment.elastic=True --config.augment.gamma=True --config.augment.crop=True
  --config.data.train_split=train_mixed --config.data.lesion_fraction=0.5   # oversampling
  --config.data.train_split=train_mixed --config.smote.enabled=True         # SMOTE-like
  --config.vae.perceptual_weight=1.0     # feature matching (config.vae.features)
  --config.vae.lesion_weight=10.0        # needs train_mixed (lesion masks)
  --config.vae.ssim_weight=1.0
  --config.vae.beta=0.5 --config.vae.kl_warmup_steps=1000
  --config.vae.likelihood=gaussian       # σ-VAE (vae.scale_mode): sharper

The objective is documented in genjax/methods/vae.py.
"""

import ml_collections

from configs import base


def get_config(arg=None):
  config = base.get_base_config(arg)
  variant = config.variant
  config.method = "vae"
  pick = lambda research, cpu, smoke: {"": research, "cpu": cpu,
                                       "smoke": smoke}[variant]

  config.train.batch_size = pick(64, 32, 4)
  config.train.num_steps = pick(100_000, 2000, 4)

  # The encoder/decoder (genjax.nn.vae.VAE). One width per level; each level
  # halves the resolution, so image_size must be divisible by 2^levels.
  config.model = model = ml_collections.ConfigDict()
  model.channels = pick((32, 64, 128, 256), (16, 32, 64), (8, 16))
  model.blocks_per_level = pick(2, 1, 1)
  model.num_groups = pick(8, 8, 4)
  # 'dense': a latent vector (prior samples have global anatomy);
  # 'spatial': an s×s×latent_dim map (sharper reconstructions, for detection).
  model.latent = "dense"
  model.latent_dim = pick(256, 64, 8)

  # The objective (genjax/methods/vae.py documents each term).
  config.vae = vae = ml_collections.ConfigDict()
  # 'l2' (Gaussian with σ² = 1/2: the textbook, blurry VAE, whose prior
  # samples look most like brains), 'l1', or 'gaussian' with the σ below.
  # 'gaussian' + 'optimal' (the σ-VAE) reconstructs far sharper but leaves
  # holes in the prior (posteriors shrink to σ ≈ 0.04): worse samples.
  vae.likelihood = "l2"
  # The Gaussian's one σ: 'optimal' (the batch's ML σ in closed form, the
  # σ-VAE), 'learned' (a parameter starting at `scale`) or 'fixed' (`scale`).
  vae.scale_mode = "optimal"
  vae.scale = 0.1
  vae.beta = 1.0  # Weight of the KL term after warm-up.
  # Momentum of the running moments of the aggregate posterior (for
  # sample.prior='aggregate'); 0.99 averages over the last ~100 batches.
  vae.posterior_momentum = 0.99
  vae.kl_warmup_steps = pick(5000, 200, 2)  # Linear KL warm-up; 0 = none.
  # Reconstruction weight inside the lesion mask (1.0 = off); lesion masks
  # exist on data.train_split='train_mixed'.
  vae.lesion_weight = 1.0
  vae.ssim_weight = 0.0  # Weight of H*W*(1 - SSIM); 0 = off.
  vae.perceptual_weight = 0.0  # Weight of the feature-matching term; 0 = off.
  vae.perceptual_distance = "l1"  # 'l1' or 'l2' between feature maps.
  # The perceptual feature network (genjax.nn.features). 'filter_bank' needs
  # no weights; 'random_conv' is a fixed random conv net (seed); 'pretrained'
  # reads a local .npz named by weights_path (nothing is downloaded).
  vae.features = features = ml_collections.ConfigDict()
  features.network = "filter_bank"
  features.num_scales = pick(4, 3, 2)
  features.channels = (16, 32, 64)
  features.seed = 0
  features.weights_path = ""

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = pick(2e-4, 1e-3, 1e-3)
  optim.warmup_steps = pick(1000, 50, 1)
  optim.schedule = pick("cosine", "cosine", "constant")
  # Follows --config.train.num_steps overrides (a reference, not a copy).
  optim.decay_steps = config.train.get_ref("num_steps")
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.weight_decay = 0.0
  # Losses are per-image sums (thousands of nats), so gradients are large by
  # design; Adam is scale-free, and clipping would only bite at the start.
  optim.grad_clip = 0.0

  # `--mode=sample` and the sample grids written during training.
  config.sample = sample = ml_collections.ConfigDict()
  sample.num_samples = pick(64, 16, 4)
  # Where latents are drawn: 'aggregate' (a Gaussian fitted to the
  # aggregate posterior, tracked during training; see genjax/methods/vae.py)
  # or 'standard' (the N(0, I) prior). On the phantom the :cpu VAE's codes
  # are strongly correlated and off-centre, so 'standard' draws fall in
  # "prior holes" and decode to blobs (RESULTS.md shows both).
  sample.prior = "aggregate"
  sample.temperature = 1.0  # Scales the spread of z around its mean.

  # The VAE's reconstruction (decode of the posterior mean) has no options.
  return config
