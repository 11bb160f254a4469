"""The FID Inception network (pool3 features) in Flax, with its weight loading.

This is a port of pytorch-fid's `InceptionV3` (itself a port of the
TensorFlow graph `inception-2015-12-05` that defines FID): torchvision's
Inception-v3 layers with the FID patches — average pools that do not count
padding (`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`) and a max pool
in the last block's pool branch (`FIDInceptionE_2`) — up to the final average
pool, whose 2048-d output ("pool3") is the FID feature. Module names equal
the PyTorch state-dict names (`Mixed_5b.branch1x1.conv.weight` is
`params/Mixed_5b/branch1x1/conv/kernel` here), so conversion is mechanical:
`experiments/convert_inception_weights.py` writes the `.npz` that
`load_inception_params` reads. No weights are ever downloaded.

Input: `[B, 299, 299, 3]` in [-1, 1] (pytorch-fid maps its [0, 1] input to
[-1, 1] after resizing; bilinear resizing commutes with that affine map).
genjax slices (`[B, H, W, 1]` in [-1, 1], 32-128 px) go through `preprocess`:
the grey channel is repeated to RGB and bilinearly resized to 299 x 299 with
half-pixel centres and no antialiasing, i.e. pytorch-fid's
`F.interpolate(mode='bilinear', align_corners=False)`. FID on upsampled
single-channel MRI is not comparable to natural-image FIDs in the literature;
it is comparable between genjax models evaluated the same way.
"""

import functools
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
CONVERTER = 'experiments/convert_inception_weights.py'


class BasicConv(nn.Module):
  """Conv (no bias) - BatchNorm (inference, eps 1e-3) - ReLU, as torchvision."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=jax.lax.Precision.HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: Array) -> Array:
  # TensorFlow's average pool (and the FID patch) ignores the zero padding.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x: Array) -> Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """pytorch-fid `FIDInceptionA` (Mixed_5b/c/d)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = BasicConv(64, name='branch1x1')(x)
    b5 = BasicConv(48, name='branch5x5_1')(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv(64, name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision `InceptionB` (Mixed_6a): the 35 -> 17 reduction."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = BasicConv(64, name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """pytorch-fid `FIDInceptionC` (Mixed_6b-e): factorised 7x7 convs."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, name='branch1x1')(x)
    b7 = BasicConv(c7, name='branch7x7_1')(x)
    b7 = BasicConv(c7, **row, name='branch7x7_2')(b7)
    b7 = BasicConv(192, **col, name='branch7x7_3')(b7)
    bd = BasicConv(c7, name='branch7x7dbl_1')(x)
    bd = BasicConv(c7, **col, name='branch7x7dbl_2')(bd)
    bd = BasicConv(c7, **row, name='branch7x7dbl_3')(bd)
    bd = BasicConv(c7, **col, name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, **row, name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision `InceptionD` (Mixed_7a): the 17 -> 8 reduction."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv(192, name='branch3x3_1')(x)
    b3 = BasicConv(320, (3, 3), stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv(192, name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """pytorch-fid `FIDInceptionE_1` (pool='avg') and `FIDInceptionE_2` ('max')."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, name='branch1x1')(x)
    b3 = BasicConv(384, name='branch3x3_1')(x)
    b3a = BasicConv(384, **row, name='branch3x3_2a')(b3)
    b3b = BasicConv(384, **col, name='branch3x3_2b')(b3)
    bd = BasicConv(448, name='branch3x3dbl_1')(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bda = BasicConv(384, **row, name='branch3x3dbl_3a')(bd)
    bdb = BasicConv(384, **col, name='branch3x3dbl_3b')(bd)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3(x)
    else:
      # The FID graph max-pools here (a quirk of that TF graph, kept for parity).
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = BasicConv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3 up to pool3: [B, 299, 299, 3] in [-1, 1] -> [B, 2048].

  Any input of at least 75 x 75 runs (the network is convolutional), but FID
  is defined on 299 x 299 inputs; use `preprocess`.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = BasicConv(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE('avg', name='Mixed_7b')(x)
    x = InceptionE('max', name='Mixed_7c')(x)
    return x.mean(axis=(1, 2))  # AdaptiveAvgPool2d(1): the pool3 features.


def preprocess(images: Array) -> Array:
  """genjax slices -> the FID network's input.

  Args:
    images: [B, H, W, C] in [-1, 1], C = 1 (grey, repeated to RGB) or 3.

  Returns:
    [B, 299, 299, 3] float32 in [-1, 1], bilinearly resized like pytorch-fid
    (half-pixel centres, edge samples clamped, no antialiasing).
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'Inception preprocess: expected [B, H, W, 1 or 3] images, got '
                     f'{images.shape}.')
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  shape = (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3)
  return jax.image.resize(images, shape, 'bilinear', antialias=False)


# --- Weights -----------------------------------------------------------------

# (collection, Flax leaf) -> PyTorch state-dict suffix.
_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def variable_shapes() -> dict[str, tuple[int, ...]]:
  """The flat `collection/module/.../leaf` names and shapes of the variables."""
  return dict(_variable_shapes())


@functools.cache
def _variable_shapes():
  # Tracing the network takes seconds: once per process. Parameter shapes do
  # not depend on the image size, so a small input is traced.
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep='/')
  return tuple((k, tuple(v.shape)) for k, v in flat.items())


def torch_name(flat_name: str) -> str:
  """'params/Mixed_5b/branch1x1/conv/kernel' -> 'Mixed_5b.branch1x1.conv.weight'."""
  parts = flat_name.split('/')
  return '.'.join(parts[1:-1] + [_TORCH_LEAF[(parts[0], parts[-1])]])


# State-dict entries the port does not use: the classifier (pool3 comes
# before it), the auxiliary classifier and BatchNorm's step counters.
_UNUSED_TORCH = ('fc.', 'AuxLogits.')


def from_torch_state_dict(state_dict) -> dict[str, np.ndarray]:
  """Converts pytorch-fid's Inception state dict to this port's flat arrays.

  Args:
    state_dict: mapping from PyTorch names to arrays (numpy arrays, or torch
      tensors converted with `.numpy()`), e.g. the FID weights file.

  Returns:
    {'params/.../kernel': array, ...} float32, the layout of the `.npz` file.

  Raises:
    ValueError: listing missing, unexpected or wrongly shaped entries.
  """
  state = {k: np.asarray(v) for k, v in state_dict.items()
           if not k.startswith(_UNUSED_TORCH) and not k.endswith('num_batches_tracked')}
  out, missing, bad_shape = {}, [], []
  for name, shape in variable_shapes().items():
    key = torch_name(name)
    if key not in state:
      missing.append(key)
      continue
    value = state.pop(key).astype(np.float32)
    if name.endswith('/kernel'):
      value = value.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O].
    if value.shape != shape:
      bad_shape.append(f'{key}: {value.shape} != {shape}')
    out[name] = value
  if missing or state or bad_shape:
    raise ValueError(
        'This is not the pytorch-fid Inception state dict '
        f'(pt_inception-2015-12-05-6726825d.pth): {len(missing)} missing '
        f'entries {missing[:5]}, {len(state)} unexpected {sorted(state)[:5]}, '
        f'{len(bad_shape)} of the wrong shape {bad_shape[:5]}.')
  return out


def load_inception_params(path: str) -> dict:
  """Loads the `.npz` written by experiments/convert_inception_weights.py.

  Args:
    path: the file (`~` is expanded).

  Returns:
    The Flax variables {'params': ..., 'batch_stats': ...} for
    `InceptionV3().apply(variables, x)`.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is not a converted FID Inception.
  """
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Inception weights file {path!r} does not exist. Convert the FID weights '
        f'with `python -m experiments.convert_inception_weights` (see {CONVERTER}).')
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Inception weights file {path!r} is not a readable .npz '
                     f'({type(e).__name__}: {e}); recreate it with {CONVERTER}.') from e
  expected = variable_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  bad_shape = [f'{k}: {flat[k].shape} != {s}' for k, s in expected.items()
               if k in flat and flat[k].shape != s]
  if missing or unexpected or bad_shape:
    raise ValueError(
        f'Inception weights file {path!r} does not hold the FID Inception: '
        f'{len(missing)} missing arrays {missing[:3]}, {len(unexpected)} unexpected '
        f'{unexpected[:3]}, {len(bad_shape)} of the wrong shape {bad_shape[:3]}. '
        f'Recreate it with {CONVERTER}.')
  for k, v in flat.items():
    if not np.all(np.isfinite(v)):
      raise ValueError(f'Inception weights file {path!r}: {k} holds NaN or Inf.')
  return flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in flat.items()}, sep='/')


# Module-level, so that every extractor shares one compiled network per input
# shape; the weights are an argument rather than a closure, since 90 MB of
# jaxpr constants would slow XLA's compile and be copied into the executable.
@jax.jit
def _features(variables, images: Array) -> Array:
  return InceptionV3().apply(variables, preprocess(images))


def features_fn(variables, batch_size: int = 32):
  """pool3 features of genjax images, in fixed-size jitted chunks.

  Args:
    variables: the Flax variables of `InceptionV3` (`load_inception_params`).
    batch_size: images per network call; the last chunk is padded, so the
      network compiles once.

  Returns:
    fn(images [B, H, W, 1 or 3] in [-1, 1]) -> numpy [B, 2048] float32.
  """
  variables = jax.tree.map(jnp.asarray, variables)

  def fn(images):
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
      raise ValueError(f'Inception features: expected [B, H, W, C] images, got {images.shape}.')
    out = []
    for start in range(0, images.shape[0], batch_size):
      chunk = images[start:start + batch_size]
      n = chunk.shape[0]
      if n < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(_features(variables, chunk))[:n])
    if not out:
      return np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate(out)

  return fn


def fid_features_fn(config):
  """The FID feature extractor named by the config, or why there is none.

  Args:
    config: a genjax config; reads `config.eval.inception_weights` (default
      from $GENJAX_INCEPTION_WEIGHTS) and `config.eval.batch_size`.

  Returns:
    (fn, status): fn(images [B, H, W, 1] in [-1, 1]) -> numpy [B, 2048]
    float32 pool3 features, and a status line; or (None, a status saying
    why FID cannot be computed) when no weights file is configured or the
    file does not exist. A file that exists but is not the converted FID
    Inception raises ValueError (a wrong file is a mistake to fix, not a
    missing optional input).
  """
  ev = config.get('eval', {})
  path = (ev.get('inception_weights', '') or '').strip()
  how = (f'convert the published FID weights with `python -m '
         f'experiments.convert_inception_weights` ({CONVERTER}) and set '
         'config.eval.inception_weights or $GENJAX_INCEPTION_WEIGHTS to the .npz')
  if not path:
    return None, f'no Inception weights configured (config.eval.inception_weights is empty): {how}.'
  full = os.path.expanduser(path)
  if not os.path.isfile(full):
    return None, (f'Inception weights file {full!r} (config.eval.inception_weights) '
                  f'not found: {how}.')
  variables = load_inception_params(full)
  batch_size = int(ev.get('batch_size', 32) or 32)
  return features_fn(variables, batch_size), f'ok: FID Inception pool3 features from {full}'
