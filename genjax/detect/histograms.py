"""Streamed pixel histograms and Dice counts (numpy).

Pixel metrics come from histograms of the residuals (positives and negatives
separately, `anomaly.histogram_bins` bins on [0, anomaly.histogram_max]), so
memory does not grow with the test set; they equal the exact values for
scores quantised to the bins.
"""

import numpy as np

from genjax.metrics import detection


def new_histogram(opts):
  """An empty `detection.ScoreHistogram` on [0, histogram_max]."""
  return detection.ScoreHistogram(0.0, float(opts["histogram_max"]),
                                   int(opts["histogram_bins"]))


def histogram_threshold_at_fpr(hist, fpr):
  """The lowest bin edge that at most `fpr` of the negatives reach.

  Pixels whose bin's lower edge is >= the threshold are predicted positive
  (as `ScoreHistogram.dice_at`), so on the histogram's own data the
  false-positive rate is <= fpr, and one bin lower it would be > fpr.

  Args:
    hist: a `detection.ScoreHistogram` of healthy (negative) scores.
    fpr: the false-positive rate allowed, in (0, 1).

  Returns:
    (threshold, k, achieved fpr): pixels in bins >= k are flagged; k = bins
    (threshold = hist.high) flags nothing. (None, None, None) without
    negatives.
  """
  n = hist.num_neg
  if not n:
    return None, None, None
  tail = np.r_[np.cumsum(hist.neg[::-1])[::-1], 0]  # Negatives in bins >= k.
  k = int(np.nonzero(tail <= fpr * n)[0][0])
  threshold = float(hist.edges[k]) if k < hist.bins else hist.high
  return threshold, k, float(tail[k] / n)


def threshold_bin(hist, threshold):
  """The first bin flagged at `threshold` (as `ScoreHistogram.dice_at`)."""
  return int(np.searchsorted(hist.edges, threshold, side="left"))


def defined(fn):
  """fn(), or None where the metric is undefined (one class only)."""
  try:
    return float(fn())
  except ValueError:
    return None


def dice_counts(predicted, target):
  """(TP, FP, FN) of boolean arrays."""
  predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
  return (int(np.sum(predicted & target)), int(np.sum(predicted & ~target)),
          int(np.sum(~predicted & target)))


def dice_from_counts(tp, fp, fn):
  """2 TP / (2 TP + FP + FN); None when both masks are empty."""
  denom = 2 * tp + fp + fn
  return float(2 * tp / denom) if denom else None


def update_subject_hists(hists, batch, residual, opts):
  """Adds each valid slice's brain pixels to its subject's ScoreHistogram."""
  brain = batch["brain"][..., 0] > 0.5
  lesion = (batch["mask"][..., 0] > 0.5) & brain
  residual = np.asarray(residual)[..., 0]
  for i in np.nonzero(np.asarray(batch["valid"], bool))[0]:
    hist = hists.setdefault(str(batch["subject"][i]), new_histogram(opts))
    hist.update(residual[i][brain[i]], lesion[i][brain[i]])
