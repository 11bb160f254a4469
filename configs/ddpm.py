r"""Score-based diffusion (DDPM, VP discretisation) on brain MRI slices.

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu
  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu --mode=sample
  python -m experiments.main --config=configs/ddpm.py --workdir=runs/ddpm   # 128 px, GPU/TPU

Variants: none = research scale (128 px, T=1000, ancestral sampling), `:cpu`
(64 px, a small UNet that trains on 2 CPU cores in about 20 minutes; samples
with all 1000 ancestral steps, detects with 20-evaluation DDIM), `:smoke` (32 px, seconds; the tests use it).
"""

import ml_collections
from ml_collections import config_dict

from configs import base


def get_config(arg=None):
  config = base.get_base_config(arg)
  variant = config.variant
  config.method = "ddpm"
  pick = lambda research, cpu, smoke: {"": research, "cpu": cpu,
                                       "smoke": smoke}[variant]

  # :cpu: a 1.1M-parameter UNet at batch 16 takes ~0.6 s a step on 2 cores.
  config.train.batch_size = pick(64, 16, 4)
  config.train.sample_every = pick(10_000, 2000, 4)  # 1000-step sampling.

  # The UNet (genjax.nn.unet.UNet); attention_resolutions are level indices.
  config.model = model = ml_collections.ConfigDict()
  model.base_channels = pick(128, 16, 8)
  model.channel_mult = pick((1, 1, 2, 2, 4), (1, 2, 4, 4), (1, 2))
  model.num_res_blocks = pick(2, 1, 1)
  model.attention_resolutions = pick((3, 4), (3,), (1,))
  model.num_heads = 1
  model.head_channels = pick(64, 64, 8)
  model.dropout = pick(0.1, 0.0, 0.0)
  model.num_groups = pick(32, 8, 4)

  # The forward process and the training objective.
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "linear"  # 'linear' or 'cosine'.
  diffusion.num_timesteps = 1000
  diffusion.prediction = "eps"  # 'eps', 'x0' or 'v'.
  diffusion.weighting = "none"  # 'none' (L_simple) or 'min_snr'.
  # Noise of the forward process in training and in sampling: 'gaussian'
  # (DDPM) or 'simplex' (AnoDDPM: spatially correlated, normalised simplex
  # noise, so that reconstruction from t removes lesion-sized structures;
  # detect with anomaly.noise='simplex' to match).
  diffusion.noise = "gaussian"
  diffusion.ema_decay = pick(0.9999, 0.995, 0.9)

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = pick(1e-4, 1e-3, 1e-3)
  optim.warmup_steps = pick(5000, 100, 1)
  optim.schedule = "constant"  # or 'cosine' (decays to 0 at decay_steps).
  optim.decay_steps = config.train.num_steps
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.weight_decay = 0.0
  optim.grad_clip = 1.0

  # `--mode=sample` and the sample grids written during training.
  config.sample = sample = ml_collections.ConfigDict()
  # 'ddpm', 'ddim', 'pc', 'ode'. At :cpu scale, 50 DDIM steps leave speckle
  # noise in about half the samples; all 1000 ancestral steps do not.
  sample.sampler = pick("ddpm", "ddpm", "ddim")
  # Model evaluations per sample; None = every timestep (ddpm, ddim).
  sample.num_steps = config_dict.FieldReference(pick(None, None, 5), int)
  sample.eta = 0.0  # DDIM only: 0 deterministic, 1 ancestral.
  sample.snr = 0.16  # pc only: Langevin corrector signal-to-noise ratio.
  sample.n_corrector_steps = 1  # pc only.
  sample.clip_x0 = 1.0  # Clip x0 predictions to the data range [-1, 1].
  sample.num_samples = pick(64, 16, 4)

  # Pseudo-healthy reconstruction (AnoDDPM): noise to t, denoise back.
  anomaly = config.anomaly
  anomaly.noise_level = 200  # t of T: noising steps before denoising.
  # Multi-t ensemble (Behrendt et al.): a tuple of t, e.g. (250, 500, 750);
  # the anomaly map is the mean of the single-t residuals. None: noise_level.
  anomaly.noise_levels = config_dict.placeholder(tuple)
  anomaly.noise = "gaussian"
  # 'ddpm', 'ddim', 'pc', 'ode' (denoise back step by step), 'one_step'
  # (x0 predicted from x_t in one network call) or 'aggregate' (ANDi-style:
  # mean over t in aggregate_range, every aggregate_stride, of the one-step
  # error |x0_hat(x_t) - x|; one call per t). genjax/methods/ddpm.py.
  anomaly.sampler = pick("ddpm", "ddim", "ddim")
  anomaly.aggregate_range = (50, 500)  # Noising steps, both ends included.
  anomaly.aggregate_stride = 50
  anomaly.num_steps = config_dict.FieldReference(pick(None, 20, 4), int)
  # None = every step from t to 0.
  # DDIM only: 0 deterministic, 1 stochastic (the respaced ancestral noise).
  # eta = 1 detects better at every t measured (BENCHMARKS.md); 0 is what
  # RESULTS.md's DDPM detection was measured with, until it is re-run.
  anomaly.eta = 0.0
  return config
