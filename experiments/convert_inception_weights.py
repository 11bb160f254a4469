r"""Converts the published PyTorch FID Inception weights to genjax's .npz.

FID is defined by one network: the TensorFlow Inception graph
`inception-2015-12-05`, which pytorch-fid ported to PyTorch and published as
a state dict. genjax never downloads it; fetch it yourself, once:

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

(about 95 MB). By torch.hub's naming convention the suffix 6726825d is the
start of the file's SHA-256; the converter warns if it is not. Then convert
it; this step, and only this one, needs PyTorch, which is not a dependency of
genjax (`pip install torch`, the CPU build is enough):

  python -m experiments.convert_inception_weights \
      --input=pt_inception-2015-12-05-6726825d.pth \
      --output=~/.genjax/fid_inception.npz

and point genjax at the result, either per run or for the shell:

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm \
      --mode=eval --config.eval.inception_weights=~/.genjax/fid_inception.npz
  export GENJAX_INCEPTION_WEIGHTS=~/.genjax/fid_inception.npz

The .npz holds one float32 array per Flax variable of
`genjax.nn.inception.InceptionV3`, named `params/Mixed_5b/branch1x1/conv/kernel`
etc. (convolution kernels transposed from PyTorch's [O, I, kh, kw] to
[kh, kw, I, O]); the classifier (`fc`) is dropped, since FID uses the pool3
features before it. The conversion checks every name and shape and refuses
any other state dict.
"""

import hashlib
import os
import sys

from absl import app
from absl import flags

from genjax.nn import inception

_INPUT = flags.DEFINE_string(
    'input', None, 'The PyTorch FID weights, pt_inception-2015-12-05-6726825d.pth.')
_OUTPUT = flags.DEFINE_string('output', None, 'The .npz file to write.')

EXPECTED_SHA256_PREFIX = '6726825d'


def load_torch_state_dict(path: str) -> dict:
  """Reads a PyTorch state dict into numpy arrays (needs torch)."""
  if not os.path.isfile(path):
    raise SystemExit(f'--input: {path!r} does not exist; download it from the URL in '
                     'this script\'s docstring.')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit('Converting the weights needs PyTorch (only for this step): '
                     '`pip install torch` (the CPU build is enough).') from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, dict):
    raise SystemExit(f'--input: {path!r} holds a {type(state).__name__}, not a state dict.')
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def convert(input_path: str, output_path: str) -> dict:
  """Converts `input_path` (.pth) to `output_path` (.npz); returns the arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    arrays = inception.from_torch_state_dict(load_torch_state_dict(input_path))
  except ValueError as e:
    raise SystemExit(f'--input {input_path!r}: {e}') from e
  output_path = os.path.expanduser(output_path)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  np.savez(output_path, **arrays)
  return arrays


def main(argv):
  del argv
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError('Give --input=PATH.pth and --output=PATH.npz.')
  input_path = os.path.expanduser(_INPUT.value)
  arrays = convert(input_path, _OUTPUT.value)
  digest = sha256(input_path)
  if not digest.startswith(EXPECTED_SHA256_PREFIX):
    # Same architecture, other weights: the features are not FID's.
    print(f'WARNING: the SHA-256 of {input_path} starts with {digest[:8]}, not '
          f'{EXPECTED_SHA256_PREFIX} as the published file\'s name says: check that '
          'it is the published FID weights, or the numbers are not FID.',
          file=sys.stderr)
  count = sum(a.size for a in arrays.values())
  print(f'Wrote {len(arrays)} arrays ({count:,} numbers) to '
        f'{os.path.expanduser(_OUTPUT.value)}.')


if __name__ == '__main__':
  app.run(main)
