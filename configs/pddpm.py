r"""pDDPM: patched diffusion models (Behrendt et al., MIDL 2023) on brain MRI.

  python -m experiments.main --config=configs/pddpm.py:cpu --workdir=runs/pddpm_cpu
  python -m experiments.main --config=configs/pddpm.py:cpu --workdir=runs/pddpm_cpu --mode=detect
  python -m experiments.main --config=configs/pddpm.py --workdir=runs/pddpm   # 128 px, GPU/TPU

The DDPM of configs/ddpm.py (same variants, network, schedule and training
settings) trained to denoise one random patch with the rest of the slice
clean, and reconstructing a slice tile by tile, each tile noised alone and
estimated in one network call (genjax/methods/pddpm.py). Variants: none =
research scale (128 px), `:cpu` (64 px), `:smoke` (32 px, the tests).

Tiles: config.pddpm.patch_size and patch_stride, None = image_size // 2 and
image_size // 4, resolved when the method is built, so they follow an
overriding --config.data.image_size: 3 x 3 = 9 tiles (9 network calls per
image and noise level) at 32, 64 and 128 px. Set them explicitly to change
the tiling, e.g. --config.pddpm.patch_size=48 --config.pddpm.patch_stride=24.
"""

from ml_collections import config_dict

from configs import ddpm


def get_config(arg=None):
  config = ddpm.get_config(arg)
  config.method = "pddpm"

  config.pddpm = pddpm = config_dict.ConfigDict()
  # Side of the square patch noised in training and of each reconstruction
  # tile; None = image_size // 2 (the authors' 48 px patches on 96 px
  # slices).
  pddpm.patch_size = config_dict.placeholder(int)
  # Step between reconstruction tiles (<= patch_size; overlaps are averaged);
  # None = image_size // 4. The last tile of each axis ends at the border.
  pddpm.patch_stride = config_dict.placeholder(int)

  anomaly = config.anomaly
  # Each tile is estimated in one network call with a clean context; the
  # step-by-step samplers would noise the context (see the module).
  anomaly.sampler = "one_step"
  # The authors reconstruct every patch from one fixed t: test_timesteps=500
  # of T=1000 in their MIDL'23 config (FinnBehrendt/patched-Diffusion-Models-
  # UAD, configs/experiment/MIDL23_DDPM/DDPM_patched.yaml). Higher than the
  # whole-slice DDPM's 200 because the clean context carries the anatomy, so
  # the patch can be noised far enough to erase lesions. Tune it on the
  # validation patients for a new dataset (experiments.ablations.
  # compare_models chooses it from its GRIDS by validation AUPRC).
  anomaly.noise_level = 500
  anomaly.noise_levels = None  # One level; a tuple gives the multi-t ensemble.
  return config
