"""genjax.nn.inception against pytorch-fid, the reference FID network.

The reference is pytorch-fid's own `InceptionV3` (torchvision's Inception-v3
with the FID patches), run with random weights, since the published weights
are not in the repository. Two tests:

* CI (no torch): `tests/data/inception_fid_reference.npz` holds what
  pytorch-fid computed for two 64-px slices with weights drawn by
  `numpy_state_dict` (NumPy's PCG64, so reproducible without torch), plus the
  state-dict names and shapes. The test redraws those weights, converts them
  with genjax's converter, runs the full `fid_features_fn` path (grey -> RGB,
  bilinear resize to 299, network) and compares the pool3 features.
* With torch and pytorch-fid installed: a freshly random-initialised
  pytorch-fid network is saved as a .pth, converted end-to-end by
  `experiments/convert_inception_weights.py`, and compared on other inputs.

The fixture is written (needs torch, torchvision and pytorch-fid, never
genjax's dependencies) with

  python tests/test_inception.py --write-fixture
"""

import os
import sys

import ml_collections
import numpy as np
import pytest

from genjax.nn import inception

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'inception_fid_reference.npz')
# pool3 features are O(1) here (mean |f| ~ 2.6); float32 round-off over 94
# layers stays below 1e-4 (measured ~1e-5).
ATOL = 1e-4


def numpy_state_dict(names, shapes, seed=0):
  """Random weights in PyTorch layout that keep activations O(1) over depth.

  He-normal convolutions; BatchNorm scales, shifts and running statistics
  away from the identity, so that a wrong BatchNorm mapping is visible.
  """
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in zip(names, shapes):
    if name.endswith('conv.weight'):
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif name.endswith(('bn.weight', 'running_var')):
      value = 0.5 + rng.random(shape)
    else:  # bn.bias, running_mean
      value = 0.2 * rng.standard_normal(shape)
    state[name] = value.astype(np.float32)
  return state


def _reference_arch():
  """pytorch-fid's FID Inception architecture, without loading weights."""
  import pytorch_fid.inception as pfi  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=protected-access
  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  return net


def _reference_features(torch_state, images):
  """pytorch-fid's pool3 features of genjax images [B, H, W, 1] in [-1, 1]."""
  import pytorch_fid.inception as pfi  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  original = pfi.load_state_dict_from_url
  # fid_inception_v3() loads its weights through this function: hand it ours.
  pfi.load_state_dict_from_url = lambda *args, **kwargs: torch_state
  try:
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  finally:
    pfi.load_state_dict_from_url = original
  # pytorch-fid takes RGB in [0, 1], NCHW; resizes to 299 and maps to [-1, 1].
  x = torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
  with torch.no_grad():
    return model(x)[0][:, :, 0, 0].numpy()


def _images(seed, n, size):
  """Smooth slices in [-1, 1] (smooth, so that resizing matters little)."""
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = scipy.ndimage.gaussian_filter(rng.standard_normal((n, size, size, 1)), (0, 2, 2, 0))
  return np.tanh(3 * x).astype(np.float32)


def write_fixture(path=FIXTURE):
  import torch  # pylint: disable=g-import-not-at-top
  reference = _reference_arch().state_dict()
  used = [k for k in reference
          if not k.startswith('fc.') and not k.endswith('num_batches_tracked')]
  shapes = [tuple(reference[k].shape) for k in used]
  state = numpy_state_dict(used, shapes)
  torch_state = dict(reference)  # fc and counters: unused by pool3.
  torch_state.update({k: torch.from_numpy(v) for k, v in state.items()})
  images = _images(1, 2, 64)
  expected = _reference_features(torch_state, images)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(
      path, names=np.array(used), ndims=np.array([len(s) for s in shapes]),
      dims=np.array([d for s in shapes for d in s]), images=images,
      expected=expected.astype(np.float32))
  print(f'Wrote {path}: features of {len(images)} images, |f| mean {np.abs(expected).mean():.3f}')


def _fixture_state():
  data = np.load(FIXTURE)
  names, ndims, dims = list(data['names']), data['ndims'], data['dims']
  ends = np.cumsum(ndims)
  shapes = [tuple(int(d) for d in dims[e - n:e]) for n, e in zip(ndims, ends)]
  return numpy_state_dict(names, shapes), data['images'], data['expected']


def _config(path, batch_size=2):
  return ml_collections.ConfigDict(
      {'eval': {'inception_weights': path, 'batch_size': batch_size}})


def test_matches_pytorch_fid_fixture(tmp_path):
  state, images, expected = _fixture_state()
  path = str(tmp_path / 'fid_inception.npz')
  np.savez(path, **inception.from_torch_state_dict(state))
  fn, status = inception.fid_features_fn(_config(path))
  assert fn is not None and status.startswith('ok') and path in status
  features = fn(images)
  assert features.shape == (2, 2048) and features.dtype == np.float32
  np.testing.assert_allclose(features, expected, atol=ATOL)
  # Deterministic, and batching does not change a row (3 images = a full
  # chunk and a padded one, with the same compiled network).
  np.testing.assert_array_equal(fn(images), features)
  three = fn(np.concatenate([images, images[:1]]))
  np.testing.assert_allclose(three[:2], features, atol=1e-5)
  np.testing.assert_allclose(three[2], features[0], atol=1e-5)


def test_fid_features_fn_reports_why_without_weights(tmp_path):
  fn, status = inception.fid_features_fn(_config(''))
  assert fn is None and 'inception_weights' in status and 'convert' in status
  missing = str(tmp_path / 'nowhere.npz')
  fn, status = inception.fid_features_fn(_config(missing))
  assert fn is None and missing in status and 'not found' in status


def test_load_inception_params_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'nowhere.npz')
  with pytest.raises(FileNotFoundError, match='nowhere.npz'):
    inception.load_inception_params(missing)
  wrong = str(tmp_path / 'wrong.npz')
  np.savez(wrong, foo=np.zeros(3))
  with pytest.raises(ValueError, match='wrong.npz.*does not hold the FID Inception'):
    inception.load_inception_params(wrong)
  garbage = tmp_path / 'garbage.npz'
  garbage.write_text('not a zip file')
  with pytest.raises(ValueError, match='garbage.npz.*not a readable'):
    inception.load_inception_params(str(garbage))
  # A wrong file named in the config is an error, not a silent null.
  with pytest.raises(ValueError, match='wrong.npz'):
    inception.fid_features_fn(_config(wrong))


def test_converter_rejects_other_state_dicts():
  shapes = inception.variable_shapes()
  names = [inception.torch_name(k) for k in shapes]
  # [kh, kw, I, O] -> [O, I, kh, kw]
  torch_shapes = [(s[3], s[2], s[0], s[1]) if len(s) == 4 else s for s in shapes.values()]
  state = {n: np.zeros(s, np.float32) for n, s in zip(names, torch_shapes)}
  state['fc.weight'] = np.zeros((1008, 2048), np.float32)  # Ignored.
  assert len(inception.from_torch_state_dict(state)) == len(shapes)
  broken = dict(state)
  del broken['Mixed_6b.branch7x7_2.conv.weight']
  with pytest.raises(ValueError, match='1 missing'):
    inception.from_torch_state_dict(broken)
  broken = dict(state, **{'Mixed_6b.branch7x7_2.conv.weight': np.zeros((3, 3, 1, 7))})
  with pytest.raises(ValueError, match='1 of the wrong shape'):
    inception.from_torch_state_dict(broken)
  with pytest.raises(ValueError, match='1 unexpected'):
    inception.from_torch_state_dict(dict(state, extra=np.zeros(1)))


def test_converter_script_matches_pytorch_fid(tmp_path):
  """End to end with torch: .pth -> converter -> Flax == pytorch-fid."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('pytorch_fid')
  from experiments import convert_inception_weights  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = _reference_arch()
  with torch.no_grad():  # Move BatchNorm away from the identity.
    for name, value in net.state_dict().items():
      if name.endswith(('bn.weight', 'running_var')):
        value.uniform_(0.5, 1.5)
      elif name.endswith(('bn.bias', 'running_mean')):
        value.normal_(0.0, 0.2)
  torch_state = net.state_dict()
  pth = str(tmp_path / 'random_fid_inception.pth')
  torch.save(torch_state, pth)
  npz = str(tmp_path / 'converted.npz')
  convert_inception_weights.convert(pth, npz)
  fn = inception.features_fn(inception.load_inception_params(npz), batch_size=3)
  images = _images(2, 3, 32)
  expected = _reference_features(torch_state, images)
  assert np.abs(expected).mean() > 1e-2  # Not a vacuous comparison.
  np.testing.assert_allclose(fn(images), expected, atol=ATOL * max(1.0, np.abs(expected).max()))


if __name__ == '__main__':
  if sys.argv[1:] == ['--write-fixture']:
    write_fixture()
  else:
    sys.exit(f'usage: python {sys.argv[0]} --write-fixture')
