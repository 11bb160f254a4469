"""The embedded brain phantom: realistic synthetic T1 brain MRI, no download.

Real brain MRI cannot ship with genjax, so the `brain_phantom` dataset is built
from the MNI ICBM152 2009a T1 template and its grey/white-matter probability
maps, which nilearn carries inside its package. Every subject is a
deterministic function of one integer seed:

* anatomy: the template under a small affine jitter (rotation, scale,
  translation) and a smooth random non-linear deformation;
* contrast: per-subject CSF/GM/WM intensity levels (WM = 1.0), keeping the
  template's texture;
* acquisition: a smooth multiplicative bias field and Rician noise;
* skull-stripping: exactly 0 outside the subject's (deformed) brain mask;
* patients only: 1 to 3 stroke-like lesions in middle-cerebral-artery
  territory, hypointense on T1 with partial-volume edges, and an exact
  ground-truth mask: the voxels whose tissue is at least half lesion
  (lesion fraction >= 0.5 where GM + WM >= 0.5, so never CSF).

Nothing is deformed at 1 mm and downsampled: each output voxel is mapped to
template space (output grid -> affine jitter -> displacement field) and the
anti-aliased template maps are sampled there, so a 64-pixel subject takes a
fraction of a second. Lesions are functions of template-space coordinates, so
they deform with the anatomy.

The anatomy, contrast, bias and noise of a subject do not depend on
`is_patient`: `make_subject(n, s, True)` and `make_subject(n, s, False)` are
the same scan with and without lesions (a pseudo-healthy ground truth).
"""

import dataclasses
import functools
import hashlib

import numpy as np
from scipy import ndimage

# --- Output grid (MNI mm, RAS) ----------------------------------------------
# The MNI152 brain mask spans x in [-72, 72], y in [-107, 73], z in [-72, 82]
# mm; jittered and warped subjects reach y in [-115, 90] and z in [-83, 93]
# (650 subjects seen). A 220 mm square in-plane field of view centred at
# y = -15 keeps a background border around every brain (>= 3 mm in y, the
# long axis); 192 mm in z covers it too.
# (Slices above the brain would only be dropped by the pipeline's
# min_brain_fraction filter, so the template's empty top is not gridded.)
FOV_MM = 220.0
FOV_Z_MM = 192.0
GRID_CENTRE_MM = (0.0, -15.0, 5.0)

# --- Subject variability ----------------------------------------------------
MAX_ROTATION_DEG = 5.0
SCALE_RANGE = (0.95, 1.05)  # Global scale; each axis adds +-1.5 %.
MAX_TRANSLATION_MM = 4.0
# Displacement field: (correlation length, RMS amplitude range) in mm; a
# coarse field varies head shape, a finer one the gyri and ventricles.
WARP_SCALES = ((60.0, (1.0, 2.5)), (20.0, (0.5, 1.2)))
# Central atrophy: brains differ most visibly in ventricle size (age). Template
# coordinates are pulled towards the ventricles by up to this fraction (a
# negative value shrinks them), inside a Gaussian envelope around them.
ATROPHY_RANGE = (-0.15, 0.35)
VENTRICLE_CENTRE_MM = (0.0, -15.0, 12.0)
VENTRICLE_ENVELOPE_MM = (20.0, 35.0, 15.0)
GM_LEVEL_RANGE = (0.68, 0.82)  # Relative to WM = 1.0.
CSF_LEVEL_RANGE = (0.18, 0.36)
BIAS_RANGE = (0.10, 0.20)  # Peak log-amplitude of the bias field.
BIAS_SCALE_MM = 80.0
NOISE_RANGE = (0.02, 0.045)  # Rician sigma relative to WM.

# --- Lesions ----------------------------------------------------------------
LESION_COUNT_PROBS = (0.5, 0.3, 0.2)  # P(1), P(2), P(3) lesions.
# Two kinds of stroke: small deep (lacunar) infarcts of the lenticulostriate
# branches, and cortical-subcortical (territorial) infarcts of MCA branches.
LACUNAR_PROB = 0.3
LACUNAR_RADIUS_MM = (3.0, 7.0)  # Log-uniform; raised to a few voxels.
TERRITORIAL_RADIUS_MM = (8.0, 24.0)
# No lesion may cover more of any axial slice than this fraction of the
# largest axial brain cross-section ("about 10 % of a slice's brain").
MAX_LESION_SLICE_FRACTION = 0.12
# MCA territory ends this far (mm) from the midline: the medial surface is
# supplied by the ACA. Every lesion component's centroid must lie beyond it.
MIN_LESION_ABS_X_MM = 18.0
_MAX_LESION_ATTEMPTS = 50


@dataclasses.dataclass(frozen=True)
class PhantomVolume:
  """One synthetic subject on the output grid.

  Attributes:
    image: float32 [X, Y, Z], T1 intensities (WM ~ 1.0 before bias and
      noise), exactly 0 outside the brain.
    lesion: uint8 [X, Y, Z] in {0, 1}, exact lesion ground truth (all zeros
      for healthy subjects).
    brain: uint8 [X, Y, Z] in {0, 1}, the subject's brain mask.
    affine: float64 [4, 4], voxel indices -> MNI mm (RAS).
  """
  image: np.ndarray
  lesion: np.ndarray
  brain: np.ndarray
  affine: np.ndarray


@dataclasses.dataclass(frozen=True)
class SubjectPlan:
  """Who one subject of a dataset is: split, name, seed, diagnosis."""
  split: str  # 'train' | 'train_mixed' | 'validation' | 'test'
  subject_id: str  # e.g. 'phantom-res64-train-0003'; unique.
  seed: int  # Unique across all splits of a dataset.
  is_patient: bool


@dataclasses.dataclass(frozen=True)
class PhantomSpec:
  """Size and composition of one brain_phantom dataset (a BuilderConfig).

  Attributes:
    name: 'tiny' | 'res64' | 'res128'.
    image_size: in-plane size in pixels (32 | 64 | 128).
    n_train: healthy subjects in 'train' (anomaly detection trains on these).
    n_mixed_healthy: healthy subjects in 'train_mixed'.
    n_mixed_patients: patients in 'train_mixed' (their lesion slices are a
      10-20 % minority of its brain slices).
    n_validation: healthy subjects in 'validation'.
    n_test_patients: patients (with lesion masks) in 'test'.
    n_test_healthy: healthy subjects in 'test'.
    seed: root of every subject seed.
  """
  name: str
  image_size: int
  n_train: int
  n_mixed_healthy: int
  n_mixed_patients: int
  n_validation: int
  n_test_patients: int
  n_test_healthy: int
  seed: int = 0


# Counts: a patient's lesions touch about a quarter of its brain slices (5 to
# 50 %), so ~55 % patients in 'train_mixed' make lesion slices ~14 % of that
# split's brain slices (>= 10 % brain). Measured: tiny 13.5 %, res64 16.7 %
# (tests/test_phantom.py checks tiny).
SPECS = {
    "tiny": PhantomSpec(
        name="tiny", image_size=32, n_train=3, n_mixed_healthy=2,
        n_mixed_patients=3, n_validation=2, n_test_patients=2,
        n_test_healthy=1),
    "res64": PhantomSpec(
        name="res64", image_size=64, n_train=36, n_mixed_healthy=8,
        n_mixed_patients=10, n_validation=8, n_test_patients=14,
        n_test_healthy=6),
    "res128": PhantomSpec(
        name="res128", image_size=128, n_train=120, n_mixed_healthy=30,
        n_mixed_patients=36, n_validation=24, n_test_patients=40,
        n_test_healthy=20),
}


# --- Dataset plans ----------------------------------------------------------


def _derive_seed(spec, split, group, index):
  """A stable 31-bit seed for subject `index` of a `group` of `split`.

  Hashing (rather than spawning in sequence) keeps every existing subject
  unchanged when another split or group grows.
  """
  key = f"brain_phantom/{spec.name}/{spec.seed}/{split}/{group}/{index}"
  return int.from_bytes(
      hashlib.sha256(key.encode()).digest()[:8], "little") % 2**31


def subject_plan(spec):
  """Every subject of `spec`: split, id, seed and diagnosis, in a fixed order.

  Args:
    spec: a PhantomSpec.

  Returns:
    list of SubjectPlan: 'train', 'train_mixed' (healthy then patients),
    'validation', 'test' (patients then healthy); ids are numbered within
    each split.

  Raises:
    ValueError: if two subjects would share a seed (see check_unique_seeds).
  """
  groups = (
      ("train", spec.n_train, False),
      ("train_mixed", spec.n_mixed_healthy, False),
      ("train_mixed", spec.n_mixed_patients, True),
      ("validation", spec.n_validation, False),
      ("test", spec.n_test_patients, True),
      ("test", spec.n_test_healthy, False),
  )
  plans, split_sizes = [], {}
  for split, count, is_patient in groups:
    group = "patient" if is_patient else "healthy"
    for index in range(count):
      number = split_sizes.get(split, 0)
      split_sizes[split] = number + 1
      plans.append(SubjectPlan(
          split=split,
          subject_id=f"phantom-{spec.name}-{split}-{number:04d}",
          seed=_derive_seed(spec, split, group, index),
          is_patient=is_patient))
  check_unique_seeds(plans)
  return plans


def check_unique_seeds(plans):
  """Raises ValueError if any seed or subject id is used twice in `plans`.

  A reused seed would put the same anatomy in two subjects, e.g. leak a
  training subject into the test split.
  """
  by_seed, by_id = {}, {}
  for plan in plans:
    other = by_seed.setdefault(plan.seed, plan)
    if other is not plan:
      raise ValueError(
          f"Seed {plan.seed} is used by two subjects: {other.subject_id} "
          f"(split {other.split!r}) and {plan.subject_id} (split "
          f"{plan.split!r}). Every phantom subject needs its own seed; "
          "change the spec's seed or the seed derivation.")
    other = by_id.setdefault(plan.subject_id, plan)
    if other is not plan:
      raise ValueError(
          f"Subject id {plan.subject_id!r} is used twice (seeds "
          f"{other.seed} and {plan.seed}).")


# --- Templates --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Templates:
  """The MNI152 maps at 1 mm and what is derived from them once."""
  maps: np.ndarray  # float32 [4, 197, 233, 189]: T1, GM, WM, brain mask.
  origin_mm: np.ndarray  # float64 [3], MNI mm of voxel (0, 0, 0).
  levels: tuple  # Template T1 medians of (CSF, GM, WM).
  deep_sites: np.ndarray  # float32 [M, 3], MNI mm of lacunar centres.
  cortical_sites: np.ndarray  # float32 [M', 3], territorial infarct origins.
  max_slice_area_mm2: float  # Largest axial brain cross-section.


@functools.lru_cache(maxsize=1)
def _templates():
  """Loads the nilearn MNI152 templates (once per process)."""
  from nilearn import datasets  # Slow import; only needed here.
  images = [
      datasets.load_mni152_template(resolution=1),
      datasets.load_mni152_gm_template(resolution=1),
      datasets.load_mni152_wm_template(resolution=1),
      datasets.load_mni152_brain_mask(resolution=1),
  ]
  affine = images[0].affine
  for image in images[1:]:
    if image.shape != images[0].shape or not np.allclose(image.affine, affine):
      raise RuntimeError(
          "nilearn's MNI152 templates are not on one grid "
          f"({images[0].shape} vs {image.shape}); the installed nilearn "
          "is not supported by genjax.data.phantom.")
  if not np.allclose(affine[:3, :3], np.eye(3)):
    raise RuntimeError(
        f"Expected a 1 mm RAS MNI152 template, got affine\n{affine}; the "
        "installed nilearn is not supported by genjax.data.phantom.")
  maps = np.stack([np.asarray(i.get_fdata(dtype=np.float32)) for i in images])
  maps = np.clip(maps, 0.0, None)
  t1, gm, wm, mask = maps
  csf = np.clip(mask - gm - wm, 0.0, 1.0)
  levels = tuple(float(np.median(t1[p > 0.9])) for p in (csf, gm, wm))
  origin = affine[:3, 3].astype(np.float64)
  deep, cortical = _lesion_sites(gm, wm, mask > 0.5, origin)
  return _Templates(
      maps=maps, origin_mm=origin, levels=levels, deep_sites=deep,
      cortical_sites=cortical,
      max_slice_area_mm2=float((mask > 0.5).sum(axis=(0, 1)).max()))


def _lesion_sites(gm, wm, brain, origin):
  """MNI mm of voxels where strokes may start: MCA territory.

  The middle cerebral artery supplies the lateral frontal, parietal and
  superior temporal cortex, the insula, and the white matter and basal
  ganglia beneath them. Excluded: the medial hemisphere (ACA), occipital lobe
  and inferior temporal lobe (PCA), thalamus, brainstem, cerebellum, and
  anything not solid tissue (ventricles, sulci).

  Args:
    gm: float32 [197, 233, 189], grey-matter probability at 1 mm.
    wm: float32 [197, 233, 189], white-matter probability.
    brain: bool [197, 233, 189], the template's brain mask.
    origin: float64 [3], MNI mm of voxel (0, 0, 0).

  Returns:
    float32 [M, 3] deep (lacunar) and [M', 3] cortical centres, MNI mm.
  """
  depth = ndimage.distance_transform_edt(brain)  # mm to the brain surface.
  x, y, z = np.meshgrid(
      *(o + np.arange(n) for o, n in zip(origin, brain.shape)),
      indexing="ij", sparse=True)
  ax = np.abs(x)
  territory = (
      (y >= -72) & (y <= 40) & (z >= -15) & (z <= 62)
      & ((y >= -40) | (z >= 0))  # Inferior temporo-occipital is PCA.
      & ((z <= 45) | (ax >= 30)))  # The vertex near the midline is ACA.
  solid = ndimage.binary_erosion(gm + wm > 0.9)
  # Lenticulostriate territory: putamen, internal capsule, corona radiata.
  # (|x| >= 22 keeps the thalamus and caudate head, PCA/ACA, out.)
  deep = (solid & territory & (ax >= 22) & (ax <= 36) & (y >= -30) &
          (y <= 25) & (z >= -5) & (z <= 35) & (depth > 15))
  # Lateral convexity cortex and the insula.
  convexity = (ax >= 35) & (depth <= 6)
  insula = (ax >= 32) & (ax <= 42) & (np.abs(y) <= 20) & (z >= -10) & (z <= 20)
  cortical = territory & (gm > 0.5) & (convexity | insula)
  to_mm = lambda m: (np.argwhere(m) + origin).astype(np.float32)
  return to_mm(deep), to_mm(cortical)


def _anti_alias(image_size):
  """Smoothing sigma (mm) and sampling stride (mm) for `image_size`."""
  voxel = FOV_MM / image_size
  # A voxel averages a box of width `voxel` and the template's voxels already
  # average 1 mm; the missing box has std 0.29 sqrt(voxel^2 - 1). A slightly
  # wider Gaussian also keeps the cortex from aliasing.
  sigma = 0.4 * np.sqrt(max(voxel**2 - 1.0, 0.0))
  # The smoothed maps are band-limited, so they can be stored coarser.
  stride = max(1, int(voxel // 1.5))
  return sigma, stride


@functools.lru_cache(maxsize=4)
def _sampling_maps(image_size):
  """The template maps smoothed for `image_size` (cached per resolution).

  Returns:
    float32 [4, X', Y', Z'] (T1, GM, WM, mask) on a grid of `stride` mm whose
    voxel (0, 0, 0) is the template's, and the stride.
  """
  sigma, stride = _anti_alias(image_size)
  maps = _templates().maps
  if sigma > 0:
    maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps])
  maps = np.ascontiguousarray(maps[:, ::stride, ::stride, ::stride])
  return maps, stride


# --- Geometry ---------------------------------------------------------------


def output_grid(image_size):
  """The output grid of `image_size`: shape and voxel -> MNI mm affine.

  Args:
    image_size: in-plane size in pixels.

  Returns:
    (shape, affine): (image_size, image_size, Z) and float64 [4, 4]; RAS,
    isotropic voxels of FOV_MM / image_size mm.
  """
  if image_size < 8:
    raise ValueError(f"image_size must be >= 8, got {image_size}.")
  voxel = FOV_MM / image_size
  shape = (image_size, image_size, int(round(FOV_Z_MM / voxel)))
  affine = np.diag([voxel, voxel, voxel, 1.0])
  affine[:3, 3] = np.asarray(GRID_CENTRE_MM) - voxel * (np.array(shape) - 1) / 2
  return shape, affine


def _axes_mm(shape, affine):
  """MNI mm of the voxel centres along each axis: 3 arrays [X], [Y], [Z]."""
  return [affine[a, 3] + affine[a, a] * np.arange(n)
          for a, n in enumerate(shape)]


def _smooth_noise(rng, axes, scale_mm, count):
  """Smooth zero-mean, unit-variance random fields on a grid.

  A sum of Gaussian bumps with random weights on a lattice of spacing
  `scale_mm`; the tensor-product form makes it a few small matrix products
  instead of a 3D convolution.

  Args:
    rng: numpy Generator.
    axes: 3 arrays [X], [Y], [Z] of mm coordinates.
    scale_mm: correlation length.
    count: number of independent fields.

  Returns:
    float64 [count, X, Y, Z].
  """
  bases = []
  for axis in axes:
    # Bumps beyond the grid keep the field stationary up to its border.
    centres = np.arange(axis[0] - 1.5 * scale_mm, axis[-1] + 1.5 * scale_mm,
                        scale_mm)
    bases.append(np.exp(-0.5 * ((axis[:, None] - centres) / scale_mm)**2))
  weights = rng.standard_normal((count,) + tuple(b.shape[1] for b in bases))
  field = np.einsum("nabc,ia,jb,kc->nijk", weights, *bases, optimize=True)
  # The field is smooth, so a sparse subset of voxels gives its spread.
  return field / field[:, ::3, ::3, ::3].std(axis=(1, 2, 3), keepdims=True)


def _rotation(angles_rad):
  """3x3 rotation from angles about x, y and z (radians)."""
  cx, cy, cz = np.cos(angles_rad)
  sx, sy, sz = np.sin(angles_rad)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _template_coords(rng_affine, rng_warp, axes):
  """Template mm coordinate of every output voxel (the subject's anatomy).

  Args:
    rng_affine: Generator for the affine jitter.
    rng_warp: Generator for the displacement field.
    axes: 3 arrays [X], [Y], [Z] of output mm coordinates.

  Returns:
    float64 [3, X, Y, Z].
  """
  angles = np.deg2rad(rng_affine.uniform(-1, 1, 3) * MAX_ROTATION_DEG)
  scale = rng_affine.uniform(*SCALE_RANGE) * rng_affine.uniform(0.985, 1.015, 3)
  shift = rng_affine.uniform(-1, 1, 3) * MAX_TRANSLATION_MM
  matrix = _rotation(angles) * scale  # Scales columns: R @ diag(scale).
  centre = np.asarray(GRID_CENTRE_MM)
  # The grid is a tensor product of its axes, so each output coordinate is a
  # sum of three 1D terms (cheaper than a [3, 3] x [3, X, Y, Z] product).
  coords = np.zeros((3,) + tuple(len(a) for a in axes))
  for i in range(3):
    coords[i] = centre[i] + shift[i]
    for j, axis in enumerate(axes):
      shape = [1, 1, 1]
      shape[j] = -1
      coords[i] += (matrix[i, j] * (axis - centre[j])).reshape(shape)
  for scale_mm, amplitude in WARP_SCALES:
    amp = rng_warp.uniform(*amplitude)
    coords += amp * _smooth_noise(rng_warp, axes, scale_mm, 3)
  # A radial map r -> r (1 - a exp(-r^2 / 2)) is monotone for a < 1, so the
  # anatomy stays unfolded.
  offset = coords - np.reshape(VENTRICLE_CENTRE_MM, (3, 1, 1, 1))
  envelope = np.exp(-0.5 * np.sum(
      (offset / np.reshape(VENTRICLE_ENVELOPE_MM, (3, 1, 1, 1)))**2, axis=0))
  coords -= rng_warp.uniform(*ATROPHY_RANGE) * envelope * offset
  return coords


def _sample(points, image_size, channels):
  """Trilinear samples of the anti-aliased template maps.

  Args:
    points: float64 [3, ...], template mm.
    image_size: selects the anti-aliasing.
    channels: indices into (T1, GM, WM, brain mask).

  Returns:
    float32 [len(channels), ...], 0 outside the template.
  """
  maps, stride = _sampling_maps(image_size)
  origin = _templates().origin_mm.reshape((3,) + (1,) * (points.ndim - 1))
  index = (points - origin) / stride
  return np.stack([
      ndimage.map_coordinates(maps[c], index, order=1, mode="constant",
                              cval=0.0)
      for c in channels])


# --- Appearance -------------------------------------------------------------


def _contrast(rng, t1):
  """Maps template T1 to the subject's tissue levels (WM = 1.0).

  A monotone piecewise-linear map through the template's CSF/GM/WM medians
  moves the tissue levels but keeps the template's texture and its partial
  volume between tissues.

  Args:
    rng: Generator.
    t1: float32 [...], template T1 intensities.

  Returns:
    float32 [...] intensities and the subject's (CSF, GM) levels.
  """
  csf_t, gm_t, wm_t = _templates().levels
  csf = rng.uniform(*CSF_LEVEL_RANGE)
  gm = rng.uniform(*GM_LEVEL_RANGE)
  image = np.interp(t1, [0.0, csf_t, gm_t, wm_t], [0.0, csf, gm, 1.0])
  image += np.maximum(t1 - wm_t, 0.0) / wm_t  # Keep WM texture above median.
  return image.astype(np.float32), (csf, gm)


def _bias_field(rng, axes):
  """Smooth multiplicative bias field, float32 [X, Y, Z], about 1 +- 10-20 %."""
  field = _smooth_noise(rng, axes, BIAS_SCALE_MM, 1)[0]
  field *= rng.uniform(*BIAS_RANGE) / np.abs(field).max()
  return np.exp(field).astype(np.float32)


def _rician(rng, image):
  """Magnitude of `image` plus complex Gaussian noise (Rician), float32."""
  sigma = np.float32(rng.uniform(*NOISE_RANGE))
  real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
  imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
  return np.sqrt(real**2 + imag**2)


# --- Lesions ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Lesion:
  """One stroke: a soft union of ellipsoids in template mm coordinates."""
  centres: np.ndarray  # [K, 3] mm.
  inverse_axes: np.ndarray  # [K, 3, 3]: (q - centre) -> unit-sphere coords.
  radii: np.ndarray  # [K] mean semi-axis, mm.
  edge_mm: float  # Logistic width of the partial-volume edge.
  waves: np.ndarray  # [2, W, 4]: wave vectors (rad/mm) and phases for the
  # outline's roughness and the intensity's texture.
  roughness_mm: float
  level: float  # Intensity relative to WM.
  reach_mm: float  # Beyond this distance from `origin` the fraction is ~0.
  origin: np.ndarray  # [3] mm.
  side: int  # Hemisphere: -1 left, +1 right.


def _frame(rng, direction):
  """Rotation whose first column is `direction`, random about it."""
  basis = np.linalg.qr(np.column_stack(
      [direction, rng.standard_normal((3, 2))]))[0]
  return basis * np.sign(basis[:, 0] @ direction)  # QR may flip the sign.


def _unit(v):
  return v / np.linalg.norm(v)


def _ellipsoids_lacunar(rng, centre, radius):
  """A small, roughly ovoid deep infarct: a core plus 1-2 lobules."""
  parts = [(centre, _frame(rng, _unit(rng.standard_normal(3))),
            radius * rng.uniform(0.7, 1.0, 3))]
  for _ in range(rng.integers(1, 3)):
    offset = _unit(rng.standard_normal(3)) * radius * rng.uniform(0.3, 0.7)
    parts.append((centre + offset, _frame(rng, _unit(offset)),
                  radius * rng.uniform(0.4, 0.7, 3)))
  return parts


def _ellipsoids_territorial(rng, site, radius, side):
  """A wedge from the cortex towards the ventricle, with irregular lobules.

  Branch occlusions infarct a cortical patch and the white matter it drains
  to, so the lesion is widest at the surface and narrows inwards.
  """
  target = np.array([side * 20.0, np.clip(site[1], -30, 15), 20.0])
  inward = _unit(target - site)
  # Deep enough to reach the white matter, not through the ventricle.
  depth = min(radius * rng.uniform(0.8, 2.0),
              0.8 * np.linalg.norm(target - site))
  count = rng.integers(3, 6)
  parts = []
  for i in range(count):
    along = i / (count - 1)
    width = radius * (1.0 - 0.55 * along) * rng.uniform(0.7, 1.0, 2)
    semi = np.array([radius * rng.uniform(0.35, 0.6), *width])
    jitter = rng.normal(0, 0.15 * radius, 3)
    parts.append((site + inward * depth * along + jitter,
                  _frame(rng, _unit(inward + rng.normal(0, 0.2, 3))), semi))
  for _ in range(rng.integers(1, 4)):  # Satellite lobules.
    anchor = parts[rng.integers(count)][0]
    offset = _unit(rng.standard_normal(3)) * radius * rng.uniform(0.5, 0.9)
    parts.append((anchor + offset, _frame(rng, _unit(offset)),
                  radius * rng.uniform(0.3, 0.55, 3)))
  return parts


def _sample_lesion(rng, side, voxel_mm, levels):
  """Draws one stroke in the hemisphere `side` (-1 left, +1 right).

  Args:
    rng: Generator.
    side: -1 or +1.
    voxel_mm: output voxel size; the smallest lesions are a few voxels.
    levels: the subject's (CSF, GM) intensities.

  Returns:
    a _Lesion.
  """
  templates = _templates()
  lacunar = rng.uniform() < LACUNAR_PROB
  sites = templates.deep_sites if lacunar else templates.cortical_sites
  sites = sites[np.sign(sites[:, 0]) == side]
  site = sites[rng.integers(len(sites))].astype(np.float64)
  low, high = LACUNAR_RADIUS_MM if lacunar else TERRITORIAL_RADIUS_MM
  low = max(low, 0.75 * voxel_mm)
  radius = np.exp(rng.uniform(np.log(low), np.log(max(low, high))))
  if lacunar:
    parts = _ellipsoids_lacunar(rng, site, radius)
  else:
    parts = _ellipsoids_territorial(rng, site, radius, side)
  centres, frames, semis = (np.array(p) for p in zip(*parts))
  # Random plane waves: ~15 mm undulations of the outline, ~8 mm texture.
  waves = rng.standard_normal((2, 6, 4))
  wavelengths = np.array([15.0, 8.0])[:, None, None]
  waves[..., :3] *= 2 * np.pi / wavelengths / np.sqrt(3)
  waves[..., 3] = rng.uniform(0, 2 * np.pi, (2, 6))
  edge = rng.uniform(0.6, 1.5)
  roughness = 0.15 * radius
  reach = np.max(np.linalg.norm(centres - site, axis=1) + semis.max(axis=1))
  csf, gm = levels
  return _Lesion(
      centres=centres,
      inverse_axes=np.transpose(frames, (0, 2, 1)) / semis[:, :, None],
      radii=semis.mean(axis=1), edge_mm=edge, waves=waves,
      roughness_mm=roughness,
      # Chronic infarcts are CSF-like, younger ones only mildly hypointense.
      level=csf + rng.uniform(0.05, 0.6) * (gm - csf),
      # _waves peaks at sqrt(12); the logistic edge is ~0 beyond 8 widths.
      reach_mm=reach + 3.5 * roughness + 8 * edge, origin=site, side=side)


def _waves(waves, points):
  """A smooth random texture of unit-ish variance at points [N, 3] -> [N]."""
  return np.sin(points @ waves[:, :3].T + waves[:, 3]).sum(axis=1) / np.sqrt(
      0.5 * len(waves))


def _lesion_fraction(lesion, points):
  """Soft lesion fraction in [0, 1] at template mm `points` [N, 3] -> [N]."""
  distance = np.full(len(points), np.inf)
  for centre, inverse, radius in zip(lesion.centres, lesion.inverse_axes,
                                     lesion.radii):
    r = np.linalg.norm((points - centre) @ inverse.T, axis=1)
    # (r - 1) * radius approximates the signed distance to the surface.
    distance = np.minimum(distance, (r - 1.0) * radius)
  distance += lesion.roughness_mm * _waves(lesion.waves[0], points)
  # The territory's medial border is a soft wall.
  medial = MIN_LESION_ABS_X_MM - lesion.side * points[:, 0]
  distance = np.maximum(distance, medial)
  return 1.0 / (1.0 + np.exp(np.clip(distance / lesion.edge_mm, -50, 50)))


def _lesion_fractions(lesions, points):
  """Per-lesion soft fractions and intensities.

  Args:
    lesions: list of L _Lesion.
    points: float64 [3, N], template mm of the brain voxels.

  Returns:
    float32 [L, N] fractions and [L, N] lesion intensities.
  """
  fractions = np.zeros((len(lesions), points.shape[1]), np.float32)
  intensities = np.zeros_like(fractions)
  for i, lesion in enumerate(lesions):
    # Only voxels near the lesion are evaluated: it is small, the brain not.
    near = np.sum((points.T - lesion.origin)**2, axis=1)
    near = np.flatnonzero(near < lesion.reach_mm**2)
    local = points[:, near].T
    fractions[i, near] = _lesion_fraction(lesion, local)
    # Infarcts are not uniform: cavitation and gliosis vary inside them.
    intensities[i, near] = lesion.level * (
        1.0 + 0.08 * _waves(lesion.waves[1], local))
  return fractions, intensities


def _acceptable(masks, brain, affine):
  """Whether lesion masks make a plausible patient.

  Args:
    masks: bool [L, N], each lesion's mask over the brain voxels.
    brain: bool [X, Y, Z], N voxels set.
    affine: float64 [4, 4], the output grid's voxel -> MNI mm.

  Returns:
    bool.
  """
  if not masks.any(axis=1).all():
    return False  # Every drawn lesion must be visible at this resolution.
  union = np.zeros(brain.shape, bool)
  union[brain] = masks.any(axis=0)
  labels, count = ndimage.label(union)
  if not 1 <= count <= 3:
    return False
  # Fragments cut off by sulci can stray; the subject's anatomy (not the
  # template's) decides what is medial.
  centroids = np.array(ndimage.center_of_mass(union, labels,
                                              range(1, count + 1)))
  x_mm = affine[0, 0] * centroids[:, 0] + affine[0, 3]
  if np.abs(x_mm).min() < MIN_LESION_ABS_X_MM:
    return False
  max_area = MAX_LESION_SLICE_FRACTION * _templates().max_slice_area_mm2
  return union.sum(axis=(0, 1)).max() * affine[0, 0]**2 <= max_area


def _add_lesions(rng, image, points, tissue, brain, levels, affine):
  """Draws 1-3 strokes and paints them into `image`.

  Args:
    rng: Generator.
    image: float32 [N], the healthy intensities of the brain voxels.
    points: float64 [3, N], their template mm coordinates.
    tissue: float32 [N], their GM + WM probability (lesions live in tissue).
    brain: bool [X, Y, Z], where the N brain voxels are.
    levels: the subject's (CSF, GM) intensities.
    affine: float64 [4, 4], the output grid's voxel -> MNI mm.

  Returns:
    float32 [N] image and bool [N] ground truth.
  """
  for _ in range(_MAX_LESION_ATTEMPTS):
    count = rng.choice(len(LESION_COUNT_PROBS), p=LESION_COUNT_PROBS) + 1
    side = rng.choice([-1, 1])
    lesions = []
    for _ in range(count):
      # Multiple infarcts are mostly emboli into the same carotid territory.
      lesion_side = side if rng.uniform() < 0.85 else -side
      lesions.append(_sample_lesion(rng, lesion_side, affine[0, 0], levels))
    fractions, intensities = _lesion_fractions(lesions, points)
    # Ground truth: voxels of tissue that is at least half lesion. (Sulcal
    # and ventricular CSF is not infarcted: the fraction painted into the
    # image is the lesion's share of the voxel, lesion x tissue.)
    masks = (fractions >= 0.5) & (tissue >= 0.5)
    fractions *= tissue
    if _acceptable(masks, brain, affine):
      break
  else:
    raise RuntimeError(
        f"No acceptable lesions after {_MAX_LESION_ATTEMPTS} draws; the "
        "lesion parameters do not fit this image size.")
  strongest = fractions.argmax(axis=0)[None]
  fraction = np.take_along_axis(fractions, strongest, axis=0)[0]
  level = np.take_along_axis(intensities, strongest, axis=0)[0]
  image = (1.0 - fraction) * image + fraction * level
  return image.astype(np.float32), masks.any(axis=0)


# --- Subjects ---------------------------------------------------------------


def make_subject(image_size, seed, is_patient):
  """Generates one synthetic subject.

  Args:
    image_size: in-plane size in pixels (e.g. 32, 64, 128).
    seed: non-negative int; same seed -> identical volume.
    is_patient: add 1-3 stroke lesions. The rest of the subject (anatomy,
      contrast, bias, noise) is the same for either value.

  Returns:
    a PhantomVolume on output_grid(image_size).
  """
  shape, affine = output_grid(image_size)
  axes = _axes_mm(shape, affine)
  streams = np.random.SeedSequence(seed).spawn(6)
  rng_affine, rng_warp, rng_contrast, rng_bias, rng_noise, rng_lesion = (
      np.random.default_rng(s) for s in streams)

  coords = _template_coords(rng_affine, rng_warp, axes)
  brain = _sample(coords, image_size, [3])[0] >= 0.5
  # Everything else is computed for the brain voxels only: the background
  # is 0 anyway, and is most of the grid.
  points = coords[:, brain]
  t1, gm, wm = _sample(points, image_size, [0, 1, 2])
  values, levels = _contrast(rng_contrast, t1)
  lesion = np.zeros(shape, np.uint8)
  if is_patient:
    tissue = np.clip(gm + wm, 0.0, 1.0)
    values, mask = _add_lesions(
        rng_lesion, values, points, tissue, brain, levels, affine)
    lesion[brain] = mask
  values *= _bias_field(rng_bias, axes)[brain]
  image = np.zeros(shape, np.float32)
  image[brain] = _rician(rng_noise, values)  # Skull-stripped: 0 elsewhere.
  return PhantomVolume(
      image=image, lesion=lesion, brain=brain.astype(np.uint8), affine=affine)
