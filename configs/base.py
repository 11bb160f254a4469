"""What every genjax config shares: data, augmentation, training and logging.

Method configs (`configs/ddpm.py`, ...) call `get_base_config(variant)` and add
their own `model` (and method-specific) sections. Variants follow the
ml_collections `path.py:arg` convention:

  no arg   research scale (128 px phantom or a real dataset, GPU/TPU)
  :cpu     a small model that trains in minutes on 2 CPU cores
  :smoke   runs in seconds; used by the tests

Every field can be overridden on the command line, e.g.
`--config.data.image_size=128`; a field that does not exist is rejected.

Scale switches shared by every method (README, "Running at scale"):

  --config.train.compute_dtype=bfloat16   bfloat16 activations; parameters,
                                          optimiser state and losses float32
  --config.train.grad_accum_steps=4       each update averages 4 micro-batches
                                          of train.batch_size / 4 (batch_size
                                          stays the global batch per update
                                          and must divide by 4 x devices)
"""

import os

import ml_collections
from ml_collections import config_dict

VARIANTS = ("", "cpu", "smoke")


def parse_variant(arg):
  """Returns the variant name for `path.py:arg`; rejects unknown variants."""
  variant = (arg or "").strip()
  if variant not in VARIANTS:
    raise ValueError(
        f"Unknown config variant {arg!r}: use one of "
        f"{', '.join(repr(v) for v in VARIANTS if v)} or none (research scale).")
  return variant


def get_base_config(variant=""):
  """The shared config; `variant` is '', 'cpu' or 'smoke'."""
  variant = parse_variant(variant)
  config = ml_collections.ConfigDict()
  config.method = ""  # Set by the method config: 'ddpm', 'vae' or 'gan'.
  config.variant = variant
  config.seed = 0

  # --- Data -----------------------------------------------------------------
  # `dataset` is a TFDS name: 'brain_phantom' (embedded, built on first use),
  # 'nifti_folder' (your own volumes) or 'slice_folder' (your own 2D PNG, TIFF
  # or NPY slices), the last two read from `manual_dir`.
  config.data = data = ml_collections.ConfigDict()
  data.dataset = "brain_phantom"
  # BuilderConfig of the dataset: brain_phantom has 'tiny' (32 px), 'res64'
  # and 'res128'; nifti_folder has 'ixi', 'atlas' and 'custom'; slice_folder
  # has 'custom' and 'kaggle_lgg'.
  data.builder_config = {"smoke": "tiny", "cpu": "res64", "": "res128"}[variant]
  data.data_dir = os.environ.get(
      "GENJAX_DATA_DIR", os.path.join("~", "tensorflow_datasets"))
  # Where nifti_folder reads the volumes you downloaded (see README).
  data.manual_dir = config_dict.placeholder(str)
  # slice_folder: a regex with named groups `subject` and `slice`, matched
  # against each file name without extension; None uses
  # genjax.data.slices.DEFAULT_PATTERN (the last number is the slice).
  data.slice_pattern = config_dict.placeholder(str)
  # nifti_folder: the sequence to read from multi-modal layouts (brats: flair,
  # t1, t1ce, t2; ixi: T1, T2, PD; mslub: FLAIR, T1W, T1WKS, T2W; wmh: FLAIR,
  # T1); None: the layout's default (the first named). Each modality is a
  # prepared dataset of its own.
  data.modality = config_dict.placeholder(str)
  data.train_split = "train"  # 'train' (healthy) or 'train_mixed'.
  data.eval_split = "test"
  data.val_split = "validation"
  data.image_size = {"smoke": 32, "cpu": 64, "": 128}[variant]
  # Axial slice indices [start, stop) kept, per volume; None keeps all.
  data.slice_range = config_dict.placeholder(tuple)
  # Slices whose brain covers less than this fraction of the slice are dropped.
  data.min_brain_fraction = 0.1
  # Robust intensity normalisation per volume: brain-voxel percentiles mapped
  # to [-1, 1] (values outside are clipped). Must be on the grid the builders
  # store (genjax.data.builders.PERCENTILES).
  data.clip_percentiles = (0.5, 99.5)
  # Oversample lesion slices of the training split to this fraction
  # (class balancing); None keeps the natural ratio.
  data.lesion_fraction = config_dict.placeholder(float)
  data.shuffle_buffer = 10_000
  data.cache = True
  data.prefetch = 2

  # --- On-device augmentation (applied inside the jitted train step) --------
  config.augment = aug = ml_collections.ConfigDict()
  aug.elastic = False
  aug.elastic_alpha = 4.0  # Largest displacement, pixels.
  aug.elastic_sigma = 6.0  # Smoothness of the displacement field, pixels.
  aug.gamma = False
  aug.gamma_range = (0.7, 1.5)
  aug.crop = False  # Random resized crop, resized back to image_size.
  aug.crop_scale = (0.7, 1.0)  # Fraction of the area kept.
  aug.crop_ratio = (0.8, 1.25)  # Aspect ratio range.
  aug.flip_lr = False
  aug.flip_ud = False
  aug.intensity = False  # Random scale and shift of brain intensities.
  aug.scale_range = (0.9, 1.1)
  aug.shift_range = (-0.1, 0.1)

  # --- SMOTE-like synthesis of minority (lesion) slices ----------------------
  # Applied on device after augmentation (genjax.data.smote): a share of the
  # lesion slices in each training batch is replaced by interpolations between
  # two lesion slices. Off by default.
  config.smote = smote = ml_collections.ConfigDict()
  smote.enabled = False
  smote.fraction = 0.5  # Share of a batch's lesion slices replaced.

  # --- Training -------------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = {"smoke": 4, "cpu": 32, "": 64}[variant]  # Global batch.
  train.num_steps = {"smoke": 4, "cpu": 2000, "": 200_000}[variant]
  train.log_every = {"smoke": 1, "cpu": 50, "": 500}[variant]
  train.ckpt_every = {"smoke": 2, "cpu": 500, "": 5000}[variant]
  train.keep_checkpoints = 3
  # Drop (and count) an update with NaN/inf instead of stopping the run.
  train.skip_nonfinite = False
  # Activations' dtype: 'float32' or 'bfloat16' (mixed precision: parameters,
  # optimiser state, GroupNorm statistics, losses and network outputs stay
  # float32). bfloat16 halves activation memory and uses the bfloat16 matrix
  # units of TPUs and recent GPUs.
  train.compute_dtype = "float32"
  # Gradient accumulation: each update averages the gradients of this many
  # micro-batches of batch_size / grad_accum_steps examples, run one after
  # another, so a large batch fits a small device. batch_size stays the global
  # batch of one update; it must divide by grad_accum_steps x devices.
  train.grad_accum_steps = 1
  train.sample_every = {"smoke": 4, "cpu": 1000, "": 10_000}[variant]
  train.num_samples = {"smoke": 4, "cpu": 16, "": 64}[variant]

  # --- Evaluation (--mode=eval) and anomaly detection (--mode=detect) -------
  # Shared by every method; method configs add their own reconstruction
  # options (e.g. the DDPM's noise level) to config.anomaly.
  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = {"smoke": 4, "cpu": 32, "": 64}[variant]
  # Samples generated for FID/KID, sharpness and diversity.
  ev.num_samples = {"smoke": 8, "cpu": 256, "": 2048}[variant]
  # Local FID Inception weights (see README); empty: FID is reported as null.
  ev.inception_weights = os.environ.get("GENJAX_INCEPTION_WEIGHTS", "")
  # Real slices the samples are compared with: 'healthy' or 'all'.
  ev.reference = "healthy"
  # Images (samples, and as many real slices) for pairwise MS-SSIM.
  ev.diversity_num_images = {"smoke": 8, "cpu": 64, "": 128}[variant]
  ev.diversity_max_pairs = 1000
  ev.kid_subset_size = 1000
  ev.kid_num_subsets = 100
  ev.num_figure_images = 8  # Images per row of the figures.

  config.anomaly = an = ml_collections.ConfigDict()
  # Side of the median filter applied to residual maps (1 = off). 5 at 128 px
  # as in Baur et al. (2021); 3 at low resolution, where a 5x5 median erases
  # lesions of a few pixels.
  an.median_filter = {"smoke": 3, "cpu": 3, "": 5}[variant]
  an.num_reconstructions = 1  # Residuals averaged over this many.
  # Pixel score (genjax/detect/scores.py): 'residual' (mean over the
  # reconstructions of |x - x_hat|) or 'mahalanobis' (|x - mu| /
  # sqrt(s^2 + mahalanobis_eps), mu and s^2 the per-pixel mean and variance
  # of num_reconstructions >= 2 draws; scores reach 2 / sqrt(eps), so raise
  # histogram_max to match, e.g. 64 for eps 1e-3).
  an.score = "residual"
  an.mahalanobis_eps = 1e-3
  # Post-processing (genjax/detect/postprocess.py), 0 = off: erode the brain
  # mask by this many pixels before scoring (edge artefacts score 0), and
  # drop 8-connected components of the thresholded maps smaller than
  # min_component pixels (Dice at a threshold, prediction maps, lesions).
  an.erode_brain = 0
  an.min_component = 0
  # Fraction of healthy validation brain pixels allowed above the threshold.
  an.healthy_fpr = 0.01
  # Slice score: 'top_k_mean' (mean of the slice_top_k largest residuals),
  # 'mean' (mean residual over the brain) or 'sum'.
  an.slice_score = "top_k_mean"
  an.slice_top_k = {"smoke": 10, "cpu": 40, "": 160}[variant]  # ~1% of pixels.
  # Streamed pixel histograms: bins on [0, histogram_max]; residuals of
  # images in [-1, 1] lie in [0, 2].
  an.histogram_bins = 16384
  an.histogram_max = 2.0
  an.num_figure_slices = 8  # Lesion slices (largest first) in the figure.
  an.write_maps = True  # Per-subject NIfTI (or .npy/PNG) anomaly maps.
  # Share of data.eval_split's patients held out (by a stable hash of the
  # subject id) as the lesion validation set where detect chooses
  # threshold_val and the ablations choose t; 0 turns it off. Unused when
  # data.val_split itself holds patients (genjax/protocol.py).
  an.patient_val_fraction = 0.25
  return config
