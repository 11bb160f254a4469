r"""The intensity-threshold floor (no network, no training): the baseline.

  python -m experiments.main --config=configs/floor.py:cpu --workdir=runs/floor_cpu --mode=detect
  python -m experiments.main --config=configs/floor.py --workdir=runs/floor --mode=detect \
    --config.floor.sign=hyper ...data flags of the dataset...   # FLAIR / T2

The residual is the normalised intensity itself (genjax/methods/floor.py),
through the same detector, brain mask, median filter, validation thresholds
and metrics as the DDPM, VAE and GAN. `floor.sign` says which way lesions
differ from tissue: 'hypo' (darker; T1 and the embedded phantom's stroke
lesions, the default) or 'hyper' (brighter; FLAIR, T2, PD).
"""

import ml_collections

from configs import base


def get_config(arg=None):
  config = base.get_base_config(arg)
  config.method = "floor"
  config.floor = floor = ml_collections.ConfigDict()
  floor.sign = "hypo"
  return config
