"""SMOTE-like lesion synthesis (genjax.data.smote) against a numpy reference."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from genjax.data import smote

LABELS = np.array([1, 0, 1, 1, 0, 1], np.int32)


def _config(enabled=True, fraction=1.0):
  return ml_collections.ConfigDict({"enabled": enabled, "fraction": fraction})


def _batch(labels=LABELS, size=8, seed=0):
  """Random images; lesion slices get a random square lesion and brain."""
  rng = np.random.default_rng(seed)
  b = len(labels)
  image = rng.uniform(-1, 1, (b, size, size, 1)).astype(np.float32)
  mask = np.zeros((b, size, size, 1), np.float32)
  brain = np.zeros((b, size, size, 1), np.float32)
  for i in range(b):
    r, c = rng.integers(1, size - 4, 2)
    brain[i, r - 1:r + 4, c - 1:c + 4] = 1
    if labels[i] == 1:
      mask[i, r:r + 3, c:c + 3] = 1
  return {"image": image, "mask": mask, "brain": brain,
          "label": np.asarray(labels), "valid": np.ones(b, bool)}


def _explain(out, batch, i):
  """(j, lam) with out[i] = lam x_i + (1 - lam) x_j for a lesion j != i."""
  x = batch["image"]
  best = None
  for j in np.flatnonzero(batch["label"] == 1):
    if j == i:
      continue
    d = (x[i] - x[j]).ravel()
    lam = float(np.dot((out[i] - x[j]).ravel(), d) / np.dot(d, d))
    residual = np.abs(lam * x[i] + (1 - lam) * x[j] - out[i]).max()
    if best is None or residual < best[2]:
      best = (j, lam, residual)
  return best


def test_replaced_slices_are_interpolations_with_consistent_masks():
  batch = _batch()
  out = jax.device_get(smote.synthesize(jax.random.key(0), batch, _config()))
  lesion = np.flatnonzero(LABELS == 1)
  for i in range(len(LABELS)):
    if LABELS[i] == 0:  # Healthy slices are never touched.
      for key in ("image", "mask", "brain"):
        np.testing.assert_array_equal(out[key][i], batch[key][i])
      continue
    assert not np.allclose(out["image"][i], batch["image"][i])
    j, lam, residual = _explain(out["image"], batch, i)
    assert residual < 1e-5 and 0.0 <= lam <= 1.0 and j in lesion
    for key in ("mask", "brain"):
      expected = (lam * batch[key][i] + (1 - lam) * batch[key][j]) >= 0.5
      np.testing.assert_array_equal(out[key][i], expected.astype(np.float32))
      # The dominant slice's mask is kept whole, so a lesion remains.
      dominant = i if lam >= 0.5 else j
      assert np.all(out[key][i][batch[key][dominant] == 1] == 1)
    assert out["mask"][i].sum() > 0
  np.testing.assert_array_equal(out["label"], LABELS)
  np.testing.assert_array_equal(out["valid"], batch["valid"])
  assert {k: v.dtype for k, v in out.items()} == {
      k: np.asarray(v).dtype for k, v in batch.items()}


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.25, 1),
                                                (0.5, 2), (0.6, 2), (1.0, 4)])
def test_replaces_the_share_of_lesion_slices(fraction, expected):
  batch = _batch()
  for seed in range(3):
    out = smote.synthesize(jax.random.key(seed), batch, _config(True, fraction))
    changed = np.any(np.asarray(out["image"]) != batch["image"], axis=(1, 2, 3))
    assert changed.sum() == expected
    assert not np.any(changed[LABELS == 0])


def test_partners_and_choices_vary_over_keys():
  batch = _batch()
  pairs = set()
  for seed in range(20):
    out = jax.device_get(smote.synthesize(jax.random.key(seed), batch,
                                          _config(True, 0.5)))
    for i in np.flatnonzero(np.any(out["image"] != batch["image"],
                                   axis=(1, 2, 3))):
      pairs.add((i, _explain(out["image"], batch, i)[0]))
  # 4 lesion slices, 3 partners each: most of the 12 pairs show up.
  assert len(pairs) >= 9


def test_deterministic_per_key_and_jittable():
  batch = _batch()
  cfg = _config(True, 0.5)
  a = smote.synthesize(jax.random.key(3), batch, cfg)
  b = jax.jit(functools.partial(smote.synthesize, smote_config=cfg))(
      jax.random.key(3), batch)
  c = smote.synthesize(jax.random.key(4), batch, cfg)
  for key in ("image", "mask", "brain"):
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)
  assert not np.allclose(a["image"], c["image"])


def test_disabled_returns_the_batch_itself():
  batch = _batch()
  assert smote.synthesize(jax.random.key(0), batch, _config(False)) is batch


@pytest.mark.parametrize("labels", [[0, 0, 1, 0], [0, 0, 0, 0]])
def test_fewer_than_two_lesion_slices_change_nothing(labels):
  batch = _batch(np.array(labels, np.int32))
  out = jax.jit(functools.partial(smote.synthesize, smote_config=_config()))(
      jax.random.key(0), batch)
  for key in ("image", "mask", "brain", "label"):
    np.testing.assert_array_equal(out[key], batch[key])


def test_fraction_out_of_range_is_a_clear_error():
  with pytest.raises(ValueError, match="config.smote.fraction"):
    smote.synthesize(jax.random.key(0), _batch(), _config(True, 1.5))
