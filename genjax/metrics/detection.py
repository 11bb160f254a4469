"""Anomaly-detection metrics: AUROC, AUPRC, Dice and thresholds (NumPy).

Scores are anomaly scores (higher = more anomalous, e.g. residuals
|x - reconstruct(x)|), labels/targets are binary ground-truth lesion masks,
both flattened over whatever they cover (pixels inside the brain, slices).
A pixel is predicted anomalous when its score is >= the threshold,
everywhere in this module.

The exact functions hold all scores in memory. For pixel metrics over a large
test set, accumulate a `ScoreHistogram` batch by batch instead: its memory is
fixed by the number of bins, and its AUROC/AUPRC/Dice are the exact values for
the scores rounded to the bins (the tests check this against the exact ones).
"""

import numpy as np
import scipy.stats


def _scores_labels(scores, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel()
  if scores.shape != labels.shape:
    raise ValueError(f'{name}: {scores.size} scores but {labels.size} labels.')
  if not np.all(np.isfinite(scores)):
    raise ValueError(f'{name}: scores contain NaN or Inf.')
  if labels.dtype != bool:
    if not np.all((labels == 0) | (labels == 1)):
      raise ValueError(f'{name}: labels must be binary (0/1 or bool).')
    labels = labels.astype(bool)
  return scores, labels


def _check_both_classes(num_pos: int, num_neg: int, name: str):
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f'{name}: undefined with {num_pos} positive and {num_neg} negative '
                     'labels; it needs both (e.g. a test set with lesions).')


def auroc(scores, labels) -> float:
  """Area under the ROC curve (= sklearn.metrics.roc_auc_score).

  Computed as the Mann-Whitney U statistic with average ranks, so ties count
  one half, exactly as the trapezoidal ROC area does.

  Args:
    scores: [N] anomaly scores (any shape; flattened).
    labels: [N] binary labels, 1/True = anomalous.

  Returns:
    AUROC in [0, 1].

  Raises:
    ValueError: if only one class is present.
  """
  scores, labels = _scores_labels(scores, labels, 'auroc')
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  _check_both_classes(num_pos, num_neg, 'auroc')
  ranks = scipy.stats.rankdata(scores)
  u = ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0
  return float(u / (num_pos * num_neg))


def _average_precision_from_counts(pos, neg) -> float:
  """AP from per-threshold counts, thresholds sorted from high to low."""
  tp = np.cumsum(pos, dtype=np.float64)
  fp = np.cumsum(neg, dtype=np.float64)
  predicted = tp + fp
  precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 1.0)
  return float(np.sum(np.asarray(pos, np.float64) / tp[-1] * precision))


def auprc(scores, labels) -> float:
  """Average precision (= sklearn.metrics.average_precision_score).

  AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds, from
  high to low: the step-wise area under the precision-recall curve, without
  the optimistic linear interpolation of a trapezoid.

  Args:
    scores: [N] anomaly scores.
    labels: [N] binary labels, 1/True = anomalous.

  Returns:
    AP in [0, 1].

  Raises:
    ValueError: if there are no positive labels (AP is undefined).
  """
  scores, labels = _scores_labels(scores, labels, 'auprc')
  if not labels.any():
    raise ValueError('auprc: undefined without positive labels (no lesion pixels).')
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order]
  # Group tied scores: one threshold per distinct value.
  starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
  pos = np.add.reduceat(labels.astype(np.int64), starts)
  counts = np.diff(np.r_[starts, scores.size])
  return _average_precision_from_counts(pos, counts - pos)


def dice(pred, target) -> float:
  """Dice overlap 2|A & B| / (|A| + |B|) of two binary masks.

  Args:
    pred: predicted mask (any shape; nonzero = anomalous).
    target: ground-truth mask of the same size.

  Returns:
    Dice in [0, 1]. Two empty masks agree perfectly: 1.0 by definition
    (a healthy subject with no detection is a correct result).
  """
  pred = np.asarray(pred).astype(bool).ravel()
  target = np.asarray(target).astype(bool).ravel()
  if pred.shape != target.shape:
    raise ValueError(f'dice: {pred.size} predicted but {target.size} target pixels.')
  total = int(pred.sum()) + int(target.sum())
  if total == 0:
    return 1.0
  return 2.0 * int(np.logical_and(pred, target).sum()) / total


def best_dice(scores, targets, *, thresholds=None) -> tuple[float, float]:
  """The best Dice over thresholds: the usual upper bound of the literature.

  Baur et al. (2021), f-AnoGAN and AnoDDPM report the Dice of the threshold
  that maximises it on the test set itself; it is an upper bound, not an
  operating point (see `threshold_at_fpr` for the realistic number).

  Args:
    scores: [N] anomaly scores (e.g. all brain pixels of the test set).
    targets: [N] binary ground truth.
    thresholds: None: every distinct score (exact optimum, O(N log N));
      an int n: n thresholds evenly spaced from min to max score; or an
      array of thresholds.

  Returns:
    (dice, threshold): the best Dice and the threshold giving it (pixels
    with score >= threshold are predicted anomalous). Without any positive
    target the best is to predict nothing: (1.0, a threshold above the max).
  """
  scores, targets = _scores_labels(scores, targets, 'best_dice')
  num_pos = int(targets.sum())
  if thresholds is None:
    order = np.argsort(-scores, kind='stable')
    s, t = scores[order], targets[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # Last index of each tie group.
    tp = np.cumsum(t)[ends]
    predicted = ends + 1
    candidates = s[ends]
  else:
    if np.isscalar(thresholds):
      candidates = np.linspace(scores.min(), scores.max(), int(thresholds))
    else:
      candidates = np.asarray(thresholds, np.float64).ravel()
    all_sorted = np.sort(scores)
    pos_sorted = np.sort(scores[targets])
    predicted = scores.size - np.searchsorted(all_sorted, candidates, side='left')
    tp = num_pos - np.searchsorted(pos_sorted, candidates, side='left')
  # Predicting nothing: Dice 1 without targets, else 0.
  none_threshold = np.nextafter(scores.max(), np.inf)
  dices = np.r_[1.0 if num_pos == 0 else 0.0,
                2.0 * tp / np.maximum(predicted + num_pos, 1)]
  candidates = np.r_[none_threshold, candidates]
  best = int(np.argmax(dices))
  return float(dices[best]), float(candidates[best])


def threshold_at_fpr(healthy_scores, fpr: float) -> float:
  """The threshold that flags a fraction `fpr` of healthy scores.

  The (1 - fpr) quantile of scores from healthy data (e.g. the residuals of
  the healthy validation split): fpr=0.05 is their 95th percentile. Chosen
  without looking at any lesion, it gives the realistic Dice.

  Args:
    healthy_scores: scores of healthy pixels (any shape).
    fpr: the false-positive rate wanted on healthy data, in (0, 1).

  Returns:
    The threshold (linear interpolation between order statistics).
  """
  if not 0.0 < fpr < 1.0:
    raise ValueError(f'threshold_at_fpr: fpr must be in (0, 1), got {fpr}.')
  scores = np.asarray(healthy_scores, np.float64).ravel()
  if scores.size == 0:
    raise ValueError('threshold_at_fpr: no healthy scores given.')
  if not np.all(np.isfinite(scores)):
    raise ValueError('threshold_at_fpr: healthy scores contain NaN or Inf.')
  return float(np.quantile(scores, 1.0 - fpr))


class ScoreHistogram:
  """Streamed pixel metrics in fixed memory: histograms of scores by label.

  Scores are rounded down to `bins` equal bins on [low, high] (values outside
  go to the end bins). All metrics are exact for the rounded scores, i.e.
  every score in bin k is taken as `edges[k]`; with residuals in [0, 2] and
  the default 20000 bins the rounding is 1e-4.

  Usage:
    hist = ScoreHistogram(0.0, 2.0)
    for scores, labels in batches:   # e.g. brain pixels of each batch
      hist.update(scores, labels)
    hist.auroc(), hist.auprc(), hist.best_dice(), hist.dice_at(threshold)
  """

  def __init__(self, low: float, high: float, bins: int = 20_000):
    if not high > low or bins < 1:
      raise ValueError(f'ScoreHistogram: needs low < high and bins >= 1, got '
                       f'{low}, {high}, {bins}.')
    self.low, self.high, self.bins = float(low), float(high), int(bins)
    self.edges = np.linspace(self.low, self.high, self.bins + 1)[:-1]  # Lower edges.
    self.pos = np.zeros(self.bins, np.int64)
    self.neg = np.zeros(self.bins, np.int64)

  def bin_index(self, scores) -> np.ndarray:
    """The bin of each score (clipped into [0, bins - 1])."""
    scaled = (np.asarray(scores, np.float64) - self.low) / (self.high - self.low)
    return np.clip(np.floor(scaled * self.bins), 0, self.bins - 1).astype(np.int64)

  def update(self, scores, labels, mask=None):
    """Adds scores (any shape) with their binary labels; `mask` selects some."""
    scores, labels = _scores_labels(scores, labels, 'ScoreHistogram.update')
    if mask is not None:
      keep = np.asarray(mask).astype(bool).ravel()
      if keep.shape != scores.shape:
        raise ValueError(f'ScoreHistogram.update: mask has {keep.size} entries, '
                         f'scores {scores.size}.')
      scores, labels = scores[keep], labels[keep]
    index = self.bin_index(scores)
    self.pos += np.bincount(index[labels], minlength=self.bins)
    self.neg += np.bincount(index[~labels], minlength=self.bins)

  @property
  def num_pos(self) -> int:
    return int(self.pos.sum())

  @property
  def num_neg(self) -> int:
    return int(self.neg.sum())

  def auroc(self) -> float:
    """AUROC of the binned scores (ties within a bin count one half)."""
    num_pos, num_neg = self.num_pos, self.num_neg
    _check_both_classes(num_pos, num_neg, 'ScoreHistogram.auroc')
    neg_below = np.cumsum(self.neg) - self.neg
    return float(np.sum(self.pos * (neg_below + 0.5 * self.neg)) / (num_pos * num_neg))

  def auprc(self) -> float:
    """Average precision of the binned scores."""
    if self.num_pos == 0:
      raise ValueError('ScoreHistogram.auprc: undefined without positive labels.')
    return _average_precision_from_counts(self.pos[::-1], self.neg[::-1])

  def best_dice(self) -> tuple[float, float]:
    """(best Dice, threshold) over the bin edges; as `best_dice`."""
    num_pos = self.num_pos
    tp = np.cumsum(self.pos[::-1])[::-1]  # Positives in bins >= k.
    predicted = tp + np.cumsum(self.neg[::-1])[::-1]
    dices = np.r_[1.0 if num_pos == 0 else 0.0,
                  2.0 * tp / np.maximum(predicted + num_pos, 1)]
    # Threshold `high` predicts nothing (no bin's lower edge reaches it).
    thresholds = np.r_[self.high, self.edges]
    best = int(np.argmax(dices))
    return float(dices[best]), float(thresholds[best])

  def dice_at(self, threshold: float) -> float:
    """Dice of predicting bins whose lower edge is >= `threshold`."""
    k = int(np.searchsorted(self.edges, threshold, side='left'))
    tp = int(self.pos[k:].sum())
    total = tp + int(self.neg[k:].sum()) + self.num_pos
    return 1.0 if total == 0 else 2.0 * tp / total
