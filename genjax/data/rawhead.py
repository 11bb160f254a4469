"""Raw scanner heads from phantom subjects: what preprocessing starts from.

A `phantom.PhantomVolume` is already what genjax trains on: skull-stripped, on
an MNI grid, background exactly 0. Real scans are not. `make_raw_head` turns
a phantom subject back into what a scanner gives, with known ground truth:

* a head around the brain: a CSF rim, a skull (dark on T1) and a bright
  scalp/fat layer, each of irregular (smoothly varying) thickness;
* a smooth multiplicative bias field over the whole head;
* a Rician noise floor in the air (not zeros);
* a random head pose (rotation, translation, small scale) in scanner space;
* an anisotropic voxel grid stored in a non-RAS voxel order (e.g. LPS or
  PIR) with the matching affine, so readers must reorient.

The lesion and brain masks follow the same transform (nearest neighbour), and
`RawHead.to_mni` is the true scanner -> MNI map a registration should recover.
Everything is a function of the phantom and the numpy Generator.
"""

import dataclasses
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

from genjax.data import nifti
from genjax.data import phantom

# Head layers outside the brain: (thickness range in mm, T1 level range
# relative to WM = 1). CSF between brain and skull is dark, cortical bone is
# darker, and the scalp's subcutaneous fat is the brightest tissue on T1.
CSF_RIM = ((1.5, 3.5), (0.15, 0.35))
SKULL = ((4.0, 8.0), (0.03, 0.12))
SCALP = ((4.0, 8.0), (0.85, 1.25))
# Relative (log) thickness variation of each layer over the head, and its
# correlation length: skull and scalp are thicker in some places than others.
THICKNESS_VARIATION = 0.3
THICKNESS_SCALE_MM = 40.0
# Bias: exp(amplitude * smooth field of unit std over the head) plus a linear
# coil gradient: about +-20-35 % over the head, more than the phantom's own
# residual bias (10-20 % peak).
BIAS_AMPLITUDE = (0.1, 0.18)
BIAS_SCALE_MM = 100.0
BIAS_GRADIENT_PER_100MM = 0.15
NOISE_SIGMA = (0.015, 0.035)  # Rician sigma relative to WM.
SCANNER_SCALE = (400.0, 1200.0)  # Raw intensity units of WM (int16 range).
SCALE_JITTER = 0.05  # Head size vs MNI: scale in [0.95, 1.05] per axis.
# Raw voxel size (mm) is the phantom's voxel times this, per raw array axis:
# the first axis is the coarse (slice) direction, as in a thick-slice scan.
DEFAULT_ANISOTROPY = (1.25, 1.0, 1.0)
MARGIN_MM = 12.0  # Air around the head on the raw grid.

_AXIS_OF = {"L": (0, -1), "R": (0, 1), "P": (1, -1), "A": (1, 1),
            "I": (2, -1), "S": (2, 1)}


@dataclasses.dataclass(frozen=True)
class RawHead:
  """A raw scan with its ground truth.

  Attributes:
    image: float32 [X, Y, Z] on the raw (scanner) grid: brain, CSF rim,
      skull, scalp, bias field, noisy background.
    lesion: uint8 [X, Y, Z] in {0, 1}, lesion truth on the raw grid
      (nearest neighbour).
    brain: uint8 [X, Y, Z] in {0, 1}, the true brain mask on the raw grid.
    affine: float64 [4, 4], raw voxel -> scanner mm (RAS+, as nibabel), in
      the requested voxel order.
    to_mni: float64 [4, 4], scanner mm -> MNI mm: the truth a registration
      should recover.
    bias: float32 [X, Y, Z], the multiplicative bias field applied (1 where
      no bias), or None.
  """
  image: np.ndarray
  lesion: np.ndarray
  brain: np.ndarray
  affine: np.ndarray
  to_mni: np.ndarray
  bias: np.ndarray = None


def orientation_matrix(orientation):
  """Signed permutation [3, 3]: column a is the RAS direction of raw axis a.

  Args:
    orientation: 3-letter nibabel axis code, e.g. 'LPS', 'PIR', 'RAS'.

  Returns:
    float64 [3, 3].

  Raises:
    ValueError: not a valid code (each of L/R, A/P, S/I exactly once).
  """
  code = str(orientation).upper()
  if len(code) != 3 or any(c not in _AXIS_OF for c in code) or len(
      {_AXIS_OF[c][0] for c in code}) != 3:
    raise ValueError(
        f"orientation {orientation!r}: need a 3-letter axis code naming each "
        "of L/R, A/P and S/I once, e.g. 'LPS', 'PIR' or 'RAS'.")
  matrix = np.zeros((3, 3))
  for a, c in enumerate(code):
    axis, sign = _AXIS_OF[c]
    matrix[axis, a] = sign
  return matrix


def _pose(rng, centre_mm, max_rotation_deg, max_translation_mm):
  """MNI mm -> scanner mm [4, 4]: rotation and scale about `centre_mm`, shift."""
  angles = np.deg2rad(rng.uniform(-1, 1, 3) * max_rotation_deg)
  scale = 1.0 + rng.uniform(-1, 1, 3) * SCALE_JITTER
  shift = rng.uniform(-1, 1, 3) * max_translation_mm
  matrix = phantom._rotation(angles) * scale  # pylint: disable=protected-access
  pose = np.eye(4)
  pose[:3, :3] = matrix
  pose[:3, 3] = centre_mm + shift - matrix @ centre_mm
  return pose


def _head_layers(rng, brain, voxel_mm, axes):
  """CSF rim, skull and scalp around the brain, with partial-volume edges.

  Args:
    rng: Generator.
    brain: bool [X, Y, Z] on a grid of isotropic `voxel_mm` voxels.
    voxel_mm: float.
    axes: 3 arrays of the grid's mm coordinates (for the thickness fields).

  Returns:
    float32 [X, Y, Z] layer intensities (0 in the brain and in the air), and
    float32 [X, Y, Z] the fraction of each voxel inside the head.
  """
  distance = ndimage.distance_transform_edt(~brain) * voxel_mm
  fields = phantom._smooth_noise(  # pylint: disable=protected-access
      rng, axes, THICKNESS_SCALE_MM, 3)
  image = np.zeros(brain.shape, np.float64)
  outer = np.zeros(brain.shape)
  below = brain.astype(np.float64)  # Fraction of each voxel assigned so far.
  for field, ((t_lo, t_hi), (v_lo, v_hi)) in zip(fields,
                                                 (CSF_RIM, SKULL, SCALP)):
    outer = outer + rng.uniform(t_lo, t_hi) * np.exp(
        THICKNESS_VARIATION * field)
    # Fraction of the voxel inside this layer's outer surface (a ramp one
    # voxel wide): partial volume instead of staircase edges.
    inside = np.maximum(
        np.clip((outer - distance) / voxel_mm + 0.5, 0.0, 1.0), below)
    image += rng.uniform(v_lo, v_hi) * (inside - below)
    below = inside
  image[brain] = 0.0
  return image.astype(np.float32), below.astype(np.float32)


def _raw_grid(head_mm, orientation, voxel_size, shape):
  """Raw voxel -> scanner mm affine and shape covering `head_mm` points.

  Args:
    head_mm: float [3, N] scanner mm of head voxels.
    orientation: axis code of the raw voxel order.
    voxel_size: 3 floats, mm per raw axis.
    shape: 3 ints or None (then: the head's bounding box plus MARGIN_MM).

  Returns:
    (shape tuple, affine float64 [4, 4]).
  """
  directions = orientation_matrix(orientation) * np.asarray(voxel_size)
  lo, hi = head_mm.min(axis=1), head_mm.max(axis=1)
  # Extent along each raw axis (axis-aligned with scanner space).
  lo_raw = np.linalg.solve(directions, lo)
  hi_raw = np.linalg.solve(directions, hi)
  lo_raw, hi_raw = np.minimum(lo_raw, hi_raw), np.maximum(lo_raw, hi_raw)
  margin = MARGIN_MM / np.asarray(voxel_size)
  if shape is None:
    shape = tuple(int(n) for n in np.ceil(hi_raw - lo_raw + 2 * margin) + 1)
  shape = tuple(int(n) for n in shape)
  if len(shape) != 3 or min(shape) < 2:
    raise ValueError(f"shape must be 3 sizes >= 2, got {shape}.")
  centre_raw = (lo_raw + hi_raw) / 2
  affine = np.eye(4)
  affine[:3, :3] = directions
  # Raw index (n - 1) / 2 sits at the head's centre.
  affine[:3, 3] = directions @ (centre_raw - (np.asarray(shape) - 1) / 2)
  return shape, affine


def make_raw_head(volume, rng, *, voxel_size=None, shape=None, pose=True,
                  max_rotation_deg=15.0, max_translation_mm=20.0, skull=True,
                  bias=True, noise=True, orientation="LPS",
                  background="rician"):
  """Turns a phantom subject into a raw scan: head, bias, noise, pose, grid.

  Args:
    volume: a phantom.PhantomVolume (skull-stripped, MNI grid).
    rng: numpy Generator (or an int seed).
    voxel_size: 3 raw voxel sizes in mm along the raw array axes; None: the
      phantom's voxel times DEFAULT_ANISOTROPY (anisotropic, e.g. 4.3 x 3.4 x
      3.4 mm at 64 px).
    shape: raw array shape; None: the head's bounding box plus MARGIN_MM.
    pose: apply a random rigid pose and small scale (else to_mni = identity).
    max_rotation_deg: per-axis rotation bound of the pose.
    max_translation_mm: per-axis translation bound of the pose.
    skull: add CSF rim, skull and scalp (else the brain alone, in air).
    bias: multiply the head by a smooth random bias field.
    noise: add Rician noise (in the head, and in the air when `background`
      is 'rician').
    orientation: raw voxel order, a 3-letter nibabel axis code ('LPS',
      'PIR', 'RAS', ...).
    background: 'rician' (a noise floor in the air, as scanners give) or
      'zero' (air exactly 0, as some converters write).

  Returns:
    a RawHead.
  """
  if background not in ("rician", "zero"):
    raise ValueError(f"background must be 'rician' or 'zero', got "
                     f"{background!r}.")
  rng = np.random.default_rng(rng)
  # Independent streams: switching skull/bias/noise off leaves the pose.
  rng_pose, rng_head, rng_bias, rng_noise = (
      np.random.default_rng(s) for s in rng.integers(2**63, size=4))
  src_affine = np.asarray(volume.affine, np.float64)
  voxel_mm = float(np.abs(src_affine[0, 0]))
  if not np.allclose(np.abs(np.diag(src_affine)[:3]), voxel_mm) or (
      np.count_nonzero(src_affine[:3, :3]) != 3):
    raise ValueError("make_raw_head needs a phantom on an isotropic RAS grid "
                     f"(phantom.output_grid); got affine\n{src_affine}.")
  if voxel_size is None:
    voxel_size = tuple(voxel_mm * a for a in DEFAULT_ANISOTROPY)

  # Pad the MNI grid so the scalp fits around the brain everywhere.
  pad = int(np.ceil((CSF_RIM[0][1] + SKULL[0][1] + SCALP[0][1]) * 1.6
                    / voxel_mm)) + 2
  brain = np.pad(volume.brain > 0, pad)
  grid = src_affine.copy()
  grid[:3, 3] -= pad * np.diag(src_affine)[:3]
  axes = [grid[a, 3] + grid[a, a] * np.arange(n)
          for a, n in enumerate(brain.shape)]
  image = np.pad(np.asarray(volume.image, np.float32), pad)
  if skull:
    layers, head = _head_layers(rng_head, brain, voxel_mm, axes)
    image = image + layers
  else:
    head = brain.astype(np.float32)
  bias_field = np.ones(brain.shape, np.float32)
  if bias:
    field = phantom._smooth_noise(  # pylint: disable=protected-access
        rng_bias, axes, BIAS_SCALE_MM, 1)[0]
    # Normalised over the head (not the grid's corners, where the field
    # peaks) so the amplitude is what the brain sees.
    inside = head > 0.5
    field = (field - field[inside].mean()) * (
        rng_bias.uniform(*BIAS_AMPLITUDE) / field[inside].std())
    direction = rng_bias.standard_normal(3)
    direction /= np.linalg.norm(direction)
    mesh = np.meshgrid(*axes, indexing="ij", sparse=True)
    field = field + BIAS_GRADIENT_PER_100MM / 100.0 * sum(
        d * m for d, m in zip(direction, mesh))
    bias_field = np.exp(field).astype(np.float32)

  # Geometry: MNI -> scanner pose, then the raw grid around the head.
  centre = np.asarray(phantom.GRID_CENTRE_MM, np.float64)
  mni_to_scanner = (_pose(rng_pose, centre, max_rotation_deg,
                          max_translation_mm) if pose else np.eye(4))
  head_idx = np.argwhere(head > 0.5)[::7].T
  head_mm = grid[:3, :3] @ head_idx + grid[:3, 3:]
  head_mm = mni_to_scanner[:3, :3] @ head_mm + mni_to_scanner[:3, 3:]
  shape, affine = _raw_grid(head_mm, orientation, voxel_size, shape)

  # Each raw voxel -> scanner mm -> MNI mm -> padded phantom index.
  to_mni = np.linalg.inv(mni_to_scanner)
  raw_to_src = np.linalg.inv(grid) @ to_mni @ affine
  index = np.indices(shape, dtype=np.float32).reshape(3, -1)
  coords = (raw_to_src[:3, :3].astype(np.float32) @ index
            + raw_to_src[:3, 3:].astype(np.float32)).reshape((3,) + shape)
  sample = lambda a, order: ndimage.map_coordinates(
      a, coords, order=order, mode="constant", cval=0.0)
  raw_bias = (sample(bias_field, 1) if bias
              else np.ones(shape, np.float32)).astype(np.float32)
  if bias:
    # The field exists everywhere in the scanner, not only inside the grid.
    raw_bias[raw_bias <= 0] = 1.0
  raw = sample(image, 1) * raw_bias
  lesion = sample(np.pad(volume.lesion, pad), 0).astype(np.uint8)
  raw_brain = sample(np.pad(volume.brain, pad), 0).astype(np.uint8)

  level = rng_noise.uniform(*SCANNER_SCALE)
  if noise:
    sigma = rng_noise.uniform(*NOISE_SIGMA)
    real = raw + sigma * rng_noise.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng_noise.standard_normal(shape, dtype=np.float32)
    noisy = np.sqrt(real**2 + imag**2)
    if background == "zero":
      air = sample(head, 1) < 0.01
      noisy[air] = 0.0
    raw = noisy
  raw = (raw * level).astype(np.float32)
  return RawHead(image=raw, lesion=lesion, brain=raw_brain,
                 affine=affine, to_mni=to_mni, bias=raw_bias)


def save_raw_head(path_stem, head, dtype=np.int16, lesion=True, brain=False):
  """Writes a RawHead as NIfTI files (qform and sform = its affine).

  Args:
    path_stem: output path without extension, e.g. 'RAW/train/sub-01'.
    head: a RawHead.
    dtype: voxel type of the image; integer types are rounded and clipped.
    lesion: write `<stem>_mask.nii.gz` when the head has lesion voxels.
    brain: write the true brain mask as `<stem>_brain.nii.gz` (a
      preprocessing run then uses it instead of its own brain extraction).

  Returns:
    {'image': path, 'mask': path (if written), 'brain': path (if written)}.
  """
  stem = os.fspath(path_stem)
  image = head.image
  if np.issubdtype(np.dtype(dtype), np.integer):
    info = np.iinfo(dtype)
    image = np.clip(np.round(image), info.min, info.max)
  paths = {"image": stem + ".nii.gz"}
  nifti.save_volume(paths["image"], image.astype(dtype), head.affine)
  if lesion and head.lesion.any():
    paths["mask"] = stem + "_mask.nii.gz"
    nifti.save_volume(paths["mask"], head.lesion, head.affine)
  if brain:
    paths["brain"] = stem + "_brain.nii.gz"
    nifti.save_volume(paths["brain"], head.brain, head.affine)
  return paths


def axis_codes(affine):
  """The nibabel axis code of an affine, e.g. ('L', 'P', 'S')."""
  return nib.aff2axcodes(affine)
