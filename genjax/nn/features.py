"""Feature networks for perceptual (feature-matching) losses.

A feature network maps images [B, H, W, 1] in [-1, 1] to a list of feature
maps [B, h_l, w_l, C_l]; a perceptual loss compares the lists of two images.
None of these networks is trained: their parameters are constants closed over
by the returned function. Three are built in, picked by `network`:

  'filter_bank'  (default, weights-free, fully deterministic) a Laplacian
                 pyramid with oriented gradients: at each of `num_scales`
                 scales, the band-pass (image minus its 5-tap binomial blur)
                 and four Sobel derivatives (0°, 90°, 45°, 135°, unit gain);
                 the next scale is the blur subsampled 2×; the final low-pass
                 image is the last map. Matching these penalises lost edges
                 and fine texture at every scale, which plain L2 treats as
                 cheap (the VAE blur); cf. the Laplacian-pyramid loss of
                 Bojanowski et al. (2018), "Optimizing the latent space of
                 generative networks".
  'random_conv'  a conv net with fixed random weights (He-normal, drawn from
                 `seed`): per level conv 3×3 -> ReLU (a feature map) -> 2×2
                 average pool. Random shallow conv features carry much of
                 what makes pretrained features useful for texture
                 (Ustyuzhaninov et al., 2017, "What does it take to generate
                 natural textures?"). Same seed, same network, on any host.
  'pretrained'   conv weights read from a local `.npz` file (`weights_path`);
                 nothing is ever downloaded, and a missing file is an error.

The `.npz` layout of 'pretrained' (a plain VGG-style stack):
  conv{i}_kernel  float [3, 3, C_in, C_out] (HWIO), i = 0, 1, ...
  conv{i}_bias    float [C_out]
  pool_after      int [k] (optional) layers followed by a 2×2 max-pool
  feature_layers  int [m] (optional) layers whose ReLU outputs are the
                  features; default: the layer before each pool, and the last
  mean, std       float [C_in] (optional) normalisation of images mapped to
                  [0, 1]; default 0 and 1
If conv0 expects 3 input channels the grey image is repeated 3 times. E.g.
torchvision's VGG16 `features[:16]` converts with, per conv layer i,
`kernel = w.permute(2, 3, 1, 0)` (OIHW -> HWIO), pool_after = [1, 3, 6],
mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225].
"""

from collections.abc import Callable, Sequence
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
FeatureFn = Callable[[Array], list]
NETWORKS = ("filter_bank", "random_conv", "pretrained")

# 5-tap binomial low-pass (a Gaussian of std 1 px), the Burt-Adelson kernel.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
# Sobel derivatives along x (columns) and y (rows), divided by 8 so a unit
# intensity ramp gives 1, and the two diagonal Sobel filters, as
# correlation kernels (out[i, j] = sum_k kernel[k] * in[i + k - 1, ...]).
_SOBEL = np.stack([
    np.outer([1, 2, 1], [-1, 0, 1]),          # d/dx
    np.outer([-1, 0, 1], [1, 2, 1]),          # d/dy
    np.array([[-2, -1, 0], [-1, 0, 1], [0, 1, 2]]),  # along the main diagonal
    np.array([[0, -1, -2], [1, 0, -1], [2, 1, 0]]),  # along the anti-diagonal
]).astype(np.float32) / 8.0


def _depthwise(x: Array, kernel: np.ndarray) -> Array:
  """Correlates each channel of x with each of K kernels, 'valid' padding.

  Args:
    x: [B, H, W, C].
    kernel: [K, kh, kw].

  Returns:
    [B, H - kh + 1, W - kw + 1, C * K], channel c * K + k = x[c] ⋆ kernel[k].
  """
  c = x.shape[-1]
  k = jnp.asarray(np.tile(np.transpose(kernel, (1, 2, 0))[:, :, None, :],
                          (1, 1, 1, c)).reshape(kernel.shape[1],
                                                kernel.shape[2], 1, -1))
  return jax.lax.conv_general_dilated(
      x, k.astype(x.dtype), window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def _pad(x: Array, width: int) -> Array:
  """Mirror padding that repeats the edge pixel (scipy.ndimage 'reflect')."""
  return jnp.pad(x, ((0, 0), (width, width), (width, width), (0, 0)),
                 mode="symmetric")


def blur(x: Array) -> Array:
  """5×5 binomial low-pass of every channel, same size. [B,H,W,C] -> same."""
  return _depthwise(_pad(x, 2), np.outer(_BINOMIAL, _BINOMIAL)[None])


def oriented_gradients(x: Array) -> Array:
  """Unit-gain Sobel derivatives of a 1-channel image.

  Args:
    x: [B, H, W, 1].

  Returns:
    [B, H, W, 4]: d/dx, d/dy, and the two diagonal derivatives.
  """
  return _depthwise(_pad(x, 1), _SOBEL)


def filter_bank(images: Array, num_scales: int = 4) -> list:
  """Laplacian-pyramid bands and oriented gradients at every scale.

  Args:
    images: [B, H, W, 1]; H and W divisible by 2^(num_scales - 1).
    num_scales: scales; scale l is H / 2^l wide.

  Returns:
    A list of num_scales maps [B, H/2^l, W/2^l, 5] (band-pass, 4 gradients)
    and the final low-pass [B, H/2^(L-1), W/2^(L-1), 1].
  """
  features, x = [], images
  for level in range(num_scales):
    low = blur(x)
    features.append(jnp.concatenate([x - low, oriented_gradients(x)], -1))
    if level < num_scales - 1:
      x = low[:, ::2, ::2]
    else:
      features.append(low)
  return features


class RandomConvNet(nn.Module):
  """conv 3×3 -> ReLU -> (feature) -> 2×2 average pool, per level."""
  channels: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, x: Array) -> list:
    features = []
    for i, width in enumerate(self.channels):
      # He-normal keeps activations O(1) through ReLUs without training.
      x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"conv{i}",
                          kernel_init=nn.initializers.he_normal())(x))
      features.append(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return features


def load_conv_stack(path: str, field: str = "config.vae.features.weights_path"):
  """Reads a 'pretrained' `.npz` (layout in the module docstring).

  Args:
    path: local file.
    field: the config field that named it (for error messages).

  Returns:
    dict with 'kernels', 'biases' (lists of float32 arrays), 'pool_after',
    'feature_layers' (sets of layer indices), 'mean', 'std' ([C_in]).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file does not have the layout.
  """
  if not path:
    raise FileNotFoundError(
        f"{field} is empty: the 'pretrained' feature network needs a local "
        ".npz of conv weights (nothing is downloaded). Set it, or use "
        "network='filter_bank' (weights-free).")
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{field}={path!r}: no such file. The 'pretrained' feature network "
        "reads conv weights from a local .npz (nothing is downloaded); see "
        "genjax/nn/features.py for the layout and how to convert VGG16.")
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  kernels, biases = [], []
  while f"conv{len(kernels)}_kernel" in arrays:
    i = len(kernels)
    kernel = np.asarray(arrays[f"conv{i}_kernel"], np.float32)
    bias = np.asarray(arrays.get(f"conv{i}_bias",
                                 np.zeros(kernel.shape[-1])), np.float32)
    expected_in = kernels[-1].shape[-1] if kernels else kernel.shape[2]
    if (kernel.ndim != 4 or kernel.shape[2] != expected_in
        or bias.shape != (kernel.shape[-1],)):
      raise ValueError(
          f"{path}: conv{i}_kernel {kernel.shape} / conv{i}_bias {bias.shape} "
          f"do not chain: expected [kh, kw, {expected_in}, C_out] and [C_out] "
          "(HWIO; convert PyTorch OIHW with permute(2, 3, 1, 0)).")
    kernels.append(kernel)
    biases.append(bias)
  if not kernels:
    raise ValueError(f"{path}: no 'conv0_kernel' array; found "
                     f"{sorted(arrays)}. See genjax/nn/features.py.")
  if kernels[0].shape[2] not in (1, 3):
    raise ValueError(f"{path}: conv0 takes {kernels[0].shape[2]} channels; "
                     "grey images need 1 or 3.")
  n = len(kernels)
  pool_after = {int(i) for i in arrays.get("pool_after", [])}
  default = sorted({i for i in pool_after if i < n} | {n - 1})
  feature_layers = {int(i) for i in arrays.get("feature_layers", default)}
  if not feature_layers or not all(0 <= i < n for i in feature_layers):
    raise ValueError(f"{path}: feature_layers {sorted(feature_layers)} must "
                     f"name layers in [0, {n}).")
  c_in = kernels[0].shape[2]
  return {
      "kernels": kernels, "biases": biases, "pool_after": pool_after,
      "feature_layers": feature_layers,
      "mean": np.asarray(arrays.get("mean", np.zeros(c_in)), np.float32),
      "std": np.asarray(arrays.get("std", np.ones(c_in)), np.float32),
  }


def conv_stack(weights: dict, images: Array) -> list:
  """Applies a loaded conv stack; features are the chosen ReLU outputs.

  Args:
    weights: from `load_conv_stack`.
    images: [B, H, W, 1] in [-1, 1].

  Returns:
    The feature maps of `weights['feature_layers']`, in layer order.
  """
  c_in = weights["kernels"][0].shape[2]
  x = jnp.repeat((images + 1.0) / 2.0, c_in, axis=-1)
  x = (x - weights["mean"]) / weights["std"]
  features = []
  for i, (kernel, bias) in enumerate(zip(weights["kernels"],
                                         weights["biases"])):
    x = jax.lax.conv_general_dilated(
        x, jnp.asarray(kernel), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    x = nn.relu(x)
    if i in weights["feature_layers"]:
      features.append(x)
    if i in weights["pool_after"]:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
  return features


def make(features_config, field: str = "config.vae.features") -> FeatureFn:
  """The feature network named by a config section.

  Args:
    features_config: has `network` ('filter_bank' | 'random_conv' |
      'pretrained'), `num_scales` (filter_bank), `channels` and `seed`
      (random_conv), `weights_path` (pretrained).
    field: the section's name, for error messages.

  Returns:
    fn(images [B, H, W, 1]) -> list of feature maps; pure and jittable.

  Raises:
    ValueError: unknown network.
    FileNotFoundError: 'pretrained' without a readable weights file.
  """
  network = features_config.network
  if network == "filter_bank":
    num_scales = int(features_config.num_scales)
    return lambda images: filter_bank(images, num_scales)
  if network == "random_conv":
    net = RandomConvNet(tuple(features_config.channels))
    params = jax.jit(net.init)(jax.random.key(int(features_config.seed)),
                               jnp.zeros((1, 16, 16, 1)))
    return lambda images: net.apply(params, images)
  if network == "pretrained":
    weights = load_conv_stack(features_config.weights_path,
                              f"{field}.weights_path")
    return lambda images: conv_stack(weights, images)
  raise ValueError(f"{field}.network={network!r}: use one of {NETWORKS}.")
