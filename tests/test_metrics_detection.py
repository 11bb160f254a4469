"""genjax.metrics.detection against scikit-learn and hand counts."""

import numpy as np
import pytest
from sklearn import metrics as skm

from genjax.metrics import detection


def _scores(seed=0, n=5000, ties=True):
  """Lesion pixels score higher on average; rounding makes many ties."""
  rng = np.random.default_rng(seed)
  labels = rng.random(n) < 0.1
  scores = rng.gamma(2.0, 0.1, n) + 0.15 * labels
  return (np.round(scores, 2) if ties else scores), labels


@pytest.mark.parametrize('ties', [True, False])
def test_auroc_auprc_match_sklearn(ties):
  scores, labels = _scores(ties=ties)
  np.testing.assert_allclose(detection.auroc(scores, labels),
                             skm.roc_auc_score(labels, scores), rtol=1e-12)
  np.testing.assert_allclose(detection.auprc(scores, labels),
                             skm.average_precision_score(labels, scores), rtol=1e-12)
  # Any shape; 0/1 labels.
  np.testing.assert_allclose(detection.auroc(scores.reshape(50, 100), labels.astype(np.uint8)),
                             skm.roc_auc_score(labels, scores), rtol=1e-12)


def test_auroc_auprc_small_hand_cases():
  assert detection.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
  assert detection.auroc([0.5, 0.5], [0, 1]) == 0.5
  # Ranked: 0.9 (pos), 0.8 (neg), 0.3 (pos): AP = 1/2 * 1 + 1/2 * 2/3.
  np.testing.assert_allclose(detection.auprc([0.9, 0.8, 0.3], [1, 0, 1]), 0.5 + 1 / 3)
  with pytest.raises(ValueError, match='needs both'):
    detection.auroc([0.1, 0.2], [0, 0])
  with pytest.raises(ValueError, match='without positive'):
    detection.auprc([0.1, 0.2], [0, 0])
  with pytest.raises(ValueError, match='binary'):
    detection.auroc([0.1, 0.2], [0, 2])


def test_dice_hand_count():
  pred = np.array([[1, 1, 0, 0], [0, 1, 1, 0]])
  target = np.array([[1, 0, 0, 0], [0, 1, 1, 1]])
  # |A| = 4, |B| = 4, |A & B| = 3.
  assert detection.dice(pred, target) == 2 * 3 / 8
  assert detection.dice(np.zeros(5), np.zeros(5)) == 1.0  # Defined: empty/empty.
  assert detection.dice(np.zeros(5), np.ones(5)) == 0.0
  assert detection.dice(np.ones(5), np.zeros(5)) == 0.0


def _brute_force_best(scores, labels, thresholds):
  # Dice of binary masks is the F1 score; sklearn computes it independently.
  best = (0.0, None)
  for t in thresholds:
    value = skm.f1_score(labels, scores >= t, zero_division=1.0)
    if value > best[0]:
      best = (value, t)
  return best


def test_best_dice_finds_the_known_optimum():
  rng = np.random.default_rng(1)
  labels = rng.random(2000) < 0.2
  # Separable: lesions score in [0.6, 1], healthy in [0, 0.5].
  scores = np.where(labels, rng.uniform(0.6, 1, 2000), rng.uniform(0, 0.5, 2000))
  value, threshold = detection.best_dice(scores, labels)
  # Every threshold in (max healthy, min lesion] is optimal; the exact sweep
  # returns a score, so the smallest lesion score.
  assert value == 1.0 and threshold == scores[labels].min()
  assert detection.dice(scores >= threshold, labels) == 1.0
  # Overlapping: exact sweep against a brute force over every distinct score.
  scores, labels = _scores(seed=2, n=1500)
  value, threshold = detection.best_dice(scores, labels)
  ref_value, ref_threshold = _brute_force_best(scores, labels, np.unique(scores))
  np.testing.assert_allclose(value, ref_value, rtol=1e-12)
  assert threshold == ref_threshold
  # A grid of n thresholds, and explicit thresholds.
  value, threshold = detection.best_dice(scores, labels, thresholds=37)
  grid = np.linspace(scores.min(), scores.max(), 37)
  ref_value, ref_threshold = _brute_force_best(scores, labels, grid)
  np.testing.assert_allclose(value, ref_value, rtol=1e-12)
  np.testing.assert_allclose(threshold, ref_threshold)
  value, threshold = detection.best_dice(scores, labels, thresholds=[0.1, 0.3, 0.5])
  ref_value, ref_threshold = _brute_force_best(scores, labels, [0.1, 0.3, 0.5])
  np.testing.assert_allclose(value, ref_value, rtol=1e-12)
  assert threshold == ref_threshold
  # No lesion at all: predicting nothing is perfect.
  value, threshold = detection.best_dice(scores, np.zeros_like(labels))
  assert value == 1.0 and (scores < threshold).all()


def test_threshold_at_fpr():
  healthy = np.arange(1000, dtype=np.float64)
  threshold = detection.threshold_at_fpr(healthy, 0.05)
  np.testing.assert_allclose(threshold, np.percentile(healthy, 95))
  assert np.mean(healthy >= threshold) == 0.05
  rng = np.random.default_rng(3)
  healthy = rng.gamma(2.0, 0.1, 100_000)
  threshold = detection.threshold_at_fpr(healthy, 0.01)
  assert abs(np.mean(healthy >= threshold) - 0.01) < 1e-4
  with pytest.raises(ValueError, match='fpr'):
    detection.threshold_at_fpr(healthy, 1.5)


def test_score_histogram_streams_exact_binned_metrics():
  scores, labels = _scores(seed=4, n=20_000, ties=False)
  hist = detection.ScoreHistogram(0.0, 2.0, bins=400)
  for start in range(0, len(scores), 3000):  # Batches, like a test set.
    hist.update(scores[start:start + 3000], labels[start:start + 3000])
  assert hist.num_pos + hist.num_neg == len(scores)
  # Exact for the scores rounded down to the bins ...
  binned = hist.edges[hist.bin_index(scores)]
  np.testing.assert_allclose(hist.auroc(), skm.roc_auc_score(labels, binned), rtol=1e-12)
  np.testing.assert_allclose(hist.auprc(), skm.average_precision_score(labels, binned),
                             rtol=1e-12)
  value, threshold = hist.best_dice()
  ref_value, ref_threshold = _brute_force_best(binned, labels, np.unique(binned))
  np.testing.assert_allclose(value, ref_value, rtol=1e-12)
  assert threshold == ref_threshold
  t = hist.edges[150]
  np.testing.assert_allclose(hist.dice_at(t), skm.f1_score(labels, binned >= t), rtol=1e-12)
  # ... and close to the exact values of the raw scores.
  assert abs(hist.auroc() - skm.roc_auc_score(labels, scores)) < 1e-3
  assert abs(hist.auprc() - skm.average_precision_score(labels, scores)) < 1e-3
  assert abs(value - detection.best_dice(scores, labels)[0]) < 2e-3
  # A mask selects pixels (e.g. the brain).
  masked = detection.ScoreHistogram(0.0, 2.0, bins=400)
  keep = np.arange(len(scores)) % 2 == 0
  masked.update(scores, labels, mask=keep)
  np.testing.assert_allclose(masked.auroc(), skm.roc_auc_score(labels[keep], binned[keep]),
                             rtol=1e-12)
