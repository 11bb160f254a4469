"""Tests of the embedded brain phantom (genjax.data.phantom).

Mostly 32-pixel subjects (~0.05 s each); the MNI templates load once per
process (a few seconds).
"""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from genjax.data import phantom

SIZE = 32
PATIENT_SEEDS = (11, 12, 13, 14, 15, 16)


@pytest.fixture(scope="module")
def patients():
  """{seed: (patient, healthy twin)} at SIZE pixels."""
  return {s: (phantom.make_subject(SIZE, s, True),
              phantom.make_subject(SIZE, s, False)) for s in PATIENT_SEEDS}


def _voxel_to_mm(affine, ijk):
  return (affine @ np.append(ijk, 1.0))[:3]


# --- Geometry -----------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_dtypes_and_affine(size):
  volume = phantom.make_subject(size, seed=3, is_patient=False)
  shape, affine = phantom.output_grid(size)
  assert shape[:2] == (size, size)
  for array, dtype in ((volume.image, np.float32), (volume.lesion, np.uint8),
                       (volume.brain, np.uint8)):
    assert array.shape == shape
    assert array.dtype == dtype
  assert volume.affine.dtype == np.float64
  np.testing.assert_array_equal(volume.affine, affine)
  voxel = phantom.FOV_MM / size
  # RAS, axis-aligned, isotropic.
  np.testing.assert_allclose(affine[:3, :3], voxel * np.eye(3))
  np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])
  assert shape[2] == round(phantom.FOV_Z_MM / voxel)
  # The MNI origin (anterior commissure) lies near the middle of the volume.
  origin = np.linalg.solve(affine, [0, 0, 0, 1])[:3]
  centre = (np.array(shape) - 1) / 2
  assert np.all(np.abs(origin - centre) < 0.15 * np.array(shape)), origin


@pytest.mark.parametrize("size", [32, 64, 128])
def test_grid_contains_the_mni_brain(size):
  shape, affine = phantom.output_grid(size)
  mask = phantom._templates().maps[3] > 0.5
  ijk = np.argwhere(mask)
  lo = ijk.min(axis=0) + phantom._templates().origin_mm
  hi = ijk.max(axis=0) + phantom._templates().origin_mm
  first = affine[:3, 3]
  last = first + np.diag(affine)[:3] * (np.array(shape) - 1)
  # Room on every side for the jitter: scale, shift (4 mm) and warps.
  assert np.all(lo - first >= 10), (lo, first)
  assert np.all(last - hi >= 10), (hi, last)


def test_grid_covers_the_brain():
  """The in-plane field of view and the top keep the brain off the border."""
  for seed in range(4):
    brain = phantom.make_subject(SIZE, seed, False).brain
    assert brain[[0, -1]].sum() == 0
    assert brain[:, [0, -1]].sum() == 0
    assert brain[:, :, -1].sum() == 0
    # ... and the brain fills a realistic part of the field of view.
    assert 0.3 < brain.sum(axis=2).astype(bool).mean() < 0.8


def test_brain_is_centred_and_ras():
  volume = phantom.make_subject(64, seed=5, is_patient=False)
  centroid = _voxel_to_mm(volume.affine,
                          ndimage.center_of_mass(volume.brain))
  # The MNI152 brain box centre is (0, -17, 5) mm; jitter moves it a little.
  np.testing.assert_allclose(centroid, [0, -17, 5], atol=12)
  # RAS: the cerebellum is posterior and inferior; nothing is anterior to it
  # at its level (below the frontal lobe), nor above the vertex.
  inverse = np.linalg.inv(volume.affine)
  is_brain = lambda mm: volume.brain[tuple(
      np.round(inverse @ np.append(mm, 1.0))[:3].astype(int))]
  assert is_brain([0, -60, -35])
  assert not is_brain([0, 50, -35])
  assert is_brain([0, -20, 60])
  assert not is_brain([0, -20, 95])


# --- Determinism --------------------------------------------------------------


def test_same_seed_same_subject():
  a = phantom.make_subject(SIZE, 7, True)
  b = phantom.make_subject(SIZE, 7, True)
  for field in ("image", "lesion", "brain", "affine"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_different_seed_different_subject():
  a = phantom.make_subject(SIZE, 7, True)
  b = phantom.make_subject(SIZE, 8, True)
  assert not np.array_equal(a.brain, b.brain)
  assert not np.array_equal(a.lesion, b.lesion)
  both = (a.brain > 0) & (b.brain > 0)
  assert np.abs(a.image[both] - b.image[both]).mean() > 0.05


# --- Appearance ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skull_stripped_t1_intensities(seed):
  volume = phantom.make_subject(SIZE, seed, False)
  brain = volume.brain.astype(bool)
  assert set(np.unique(volume.brain)) == {0, 1}
  assert np.all(volume.image[~brain] == 0.0)  # Exactly 0 outside.
  assert np.all(volume.image[brain] > 0.0)
  values = volume.image[brain]
  # WM ~ 1.0 (bias and noise move it by ~20 %), GM and CSF darker.
  assert 0.85 < np.percentile(values, 90) < 1.3
  assert np.percentile(values, 10) < 0.75
  # The MNI152 brain mask holds 1.88 litres; scaling by +-5 % per axis and
  # the warps keep subjects near it.
  litres = brain.sum() * (phantom.FOV_MM / SIZE)**3 / 1e6
  assert 1.5 < litres < 2.3


def test_healthy_subjects_have_no_lesion():
  for seed in range(5):
    assert not phantom.make_subject(SIZE, seed, False).lesion.any()


# --- Lesions ------------------------------------------------------------------


def test_lesions_inside_brain(patients):
  for patient, _ in patients.values():
    assert set(np.unique(patient.lesion)) <= {0, 1}
    assert patient.lesion.any()
    assert not np.any(patient.lesion & (1 - patient.brain))


def test_one_to_three_lesions_of_plausible_size(patients):
  for seed, (patient, _) in patients.items():
    labels, count = ndimage.label(patient.lesion)
    assert 1 <= count <= 3, (seed, count)
    # No lesion covers more than ~10 % of a slice's brain.
    largest_slice = patient.brain.sum(axis=(0, 1)).max()
    assert patient.lesion.sum(axis=(0, 1)).max() <= 0.15 * largest_slice
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 1 and sizes.sum() < 0.05 * patient.brain.sum()


def test_lesions_are_lateral(patients):
  """Middle cerebral artery territory: not the medial (ACA) hemisphere."""
  for seed, (patient, _) in patients.items():
    labels, count = ndimage.label(patient.lesion)
    for ijk in ndimage.center_of_mass(patient.lesion, labels,
                                      range(1, count + 1)):
      x, y, _ = _voxel_to_mm(patient.affine, ijk)
      assert abs(x) > 15, (seed, x)
      assert y > -85, (seed, y)  # Not the occipital pole (PCA).


def test_lesions_are_hypointense(patients):
  for seed, (patient, healthy) in patients.items():
    lesion = patient.lesion.astype(bool)
    brain = patient.brain.astype(bool)
    white_matter = np.percentile(healthy.image[brain], 90)
    # Even a one-voxel lesion (lesion fraction ~0.5) is 10 % darker than WM.
    assert patient.image[lesion].mean() < 0.9 * white_matter, seed
    # Darker than the same voxels without the stroke.
    assert patient.image[lesion].mean() < healthy.image[lesion].mean() - 0.05


def test_patient_is_its_healthy_twin_plus_lesions(patients):
  """is_patient only adds lesions: anatomy, contrast and noise are shared."""
  for seed, (patient, healthy) in patients.items():
    np.testing.assert_array_equal(patient.brain, healthy.brain)
    changed = patient.image != healthy.image
    assert changed.sum() < 0.1 * patient.brain.sum(), seed
    # Lesion fractions below 0.5 (outside the mask) darken voxels only near
    # it: partial volume and sub-threshold lobules.
    mm_to_lesion = ndimage.distance_transform_edt(
        1 - patient.lesion, sampling=phantom.FOV_MM / SIZE)
    assert mm_to_lesion[changed].max() <= 40.0, seed
    assert np.abs(patient.image - healthy.image)[mm_to_lesion > 15].max() < 0.15


def test_lesions_at_64_pixels():
  patient = phantom.make_subject(64, 21, True)
  _, count = ndimage.label(patient.lesion)
  assert 1 <= count <= 3
  assert not np.any(patient.lesion & (1 - patient.brain))


# --- Dataset plans ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(phantom.SPECS))
def test_subject_plan(name):
  spec = phantom.SPECS[name]
  plans = phantom.subject_plan(spec)
  assert plans == phantom.subject_plan(spec)  # Deterministic.
  by_split = {}
  for plan in plans:
    by_split.setdefault(plan.split, []).append(plan)
  count = lambda split, patient: sum(
      p.is_patient == patient for p in by_split[split])
  assert count("train", False) == spec.n_train
  assert count("train", True) == 0
  assert count("train_mixed", False) == spec.n_mixed_healthy
  assert count("train_mixed", True) == spec.n_mixed_patients
  assert count("validation", False) == spec.n_validation
  assert count("validation", True) == 0
  assert count("test", True) == spec.n_test_patients
  assert count("test", False) == spec.n_test_healthy
  assert len({p.seed for p in plans}) == len(plans)  # Unique across splits.
  assert len({p.subject_id for p in plans}) == len(plans)
  assert all(p.subject_id.startswith(f"phantom-{name}-{p.split}-")
             for p in plans)


def test_plan_seeds_stable_when_a_split_grows():
  spec = phantom.SPECS["res64"]
  bigger = dataclasses.replace(spec, n_train=spec.n_train + 5,
                               n_mixed_healthy=spec.n_mixed_healthy + 2)
  seeds = lambda s: {(p.split, p.is_patient, p.seed)
                     for p in phantom.subject_plan(s)}
  assert seeds(spec) <= seeds(bigger)
  other = dataclasses.replace(spec, seed=1)
  assert not seeds(spec) & seeds(other)


def test_tiny_train_mixed_lesion_slice_fraction():
  """Lesion slices are a 10-20 % minority of train_mixed's brain slices."""
  spec = phantom.SPECS["tiny"]
  brain_slices = lesion_slices = 0
  for plan in phantom.subject_plan(spec):
    if plan.split != "train_mixed":
      continue
    volume = phantom.make_subject(spec.image_size, plan.seed, plan.is_patient)
    # The pipeline's default min_brain_fraction: slices >= 10 % brain.
    kept = volume.brain.sum(axis=(0, 1)) >= 0.1 * spec.image_size**2
    brain_slices += kept.sum()
    lesion_slices += (kept & volume.lesion.any(axis=(0, 1))).sum()
  assert 0.10 <= lesion_slices / brain_slices <= 0.20
