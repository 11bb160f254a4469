r"""Anomaly detection by reconstruction: one detector for every method.

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu --mode=detect

A method's `reconstruct(state, images, rng)` gives a pseudo-healthy version of
each test slice; what it could not reproduce is the anomaly:

  residual = median_filter(brain * score) * brain,
  score    = mean_i |x - reconstruct_i(x)|               anomaly.score='residual'
           | |x - mu| / sqrt(s² + eps) over the draws     anomaly.score='mahalanobis'

(`anomaly.num_reconstructions` reconstructions with independent rngs, a
`anomaly.median_filter` x `anomaly.median_filter` median filter with
scipy's 'reflect' border, restricted to the brain mask -- eroded by
`anomaly.erode_brain` pixels -- before and after the filter so that
background never enters a score). Thresholded maps drop components under
`anomaly.min_component` pixels. The same code serves the VAE, the GAN and the
DDPM; nothing here knows a method's name. A method's optional
`anomaly_score` hook may replace the pixel map, the slice score or the
reconstruction (`scores` documents it; the DDPM's multi-t ensemble and
'aggregate' score use it).

Modules:
  scores       residual map, median filter, Mahalanobis, slice scores and
               the jittable score function (JAX);
  postprocess  brain-mask erosion and small-component removal;
  histograms   streamed pixel histograms, thresholds, Dice counts (numpy);
  loop         `detect`, `detect_mode`, options, thresholds, the passes;
  maps         back to the stored grid, NIfTI/PNG maps, `MapWriter`;
  report       report.md, the examples figure, JSON (shared with eval);
  batches      one ordered pass over a split on one host (shared with eval).
`genjax.anomaly` re-exports the public names.

Cost (metrics.json): network_calls_per_slice, the network evaluations of the
score function per slice (a method states its reconstruction's cost as
`reconstruct.network_calls`; else one forward pass per draw), and
seconds_per_slice, the wall time of the score function per slice over every
scored batch but the first (which compiles).

Thresholds and metrics (written to DIR/detect/metrics.json):
  threshold           the residual above which a pixel is called anomalous,
                      chosen on the HEALTHY validation split so that a
                      fraction `anomaly.healthy_fpr` of its brain pixels
                      exceed it (the realistic operating point);
  dice_at_threshold   Dice of all test brain pixels at that threshold;
  dice_best, threshold_best
                      the best Dice over all thresholds, chosen on the test
                      labels themselves: an optimistic upper bound (what much
                      of the literature reports), never a deployable number;
  auroc, auprc        pixel-level, over every test pixel inside the brain;
  slice_auroc, slice_auprc
                      slice level against `label`; slice score = mean of the
                      `anomaly.slice_top_k` largest residuals (or the hook's);
  dice_per_subject_*  3D Dice per test subject with lesions, at `threshold`;
  threshold_val, dice_val, dice_at_val_threshold, dice_per_subject_val_*
                      the threshold maximising Dice on the validation
                      PATIENTS (genjax.protocol: held out of the eval split
                      by anomaly.patient_val_fraction, or val_split's
                      own patients), the Dice it reaches there, and its
                      Dice on test: the published protocol's number;
  lesions             lesion-wise detection by size at threshold_val (else
                      `threshold`), genjax.metrics.lesions.
Every test number excludes the validation patients.

Pixel metrics come from streamed histograms of the residuals (positives and
negatives separately, `anomaly.histogram_bins` bins on
[0, anomaly.histogram_max]), so memory does not grow with the test set; they
equal the exact values for scores quantised to the bins (tests compare them
with scikit-learn). Padding examples (`valid` False) never count.

Beside metrics.json, DIR/detect/subject_histograms.npz holds each test
subject's own pixel histograms (`pos`, `neg` [S, bins], rows summing to the
pooled ones; the validation patients' rows flagged by `validation`),
`threshold` and `threshold_val`, so that metrics can be
recomputed on any resample of subjects (`load_subject_histograms`,
`pooled_histogram`; the bootstrap of experiments/ablations uses them), and
DIR/detect/examples.npz the arrays of the figure's slices (image, mask,
brain, reconstruction, residual [N, H, W, 1], subject, slice).

Per-subject anomaly maps: see `maps`.
"""
