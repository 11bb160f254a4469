"""Config checks that run before anything is built or compiled.

ml_collections already rejects unknown fields and wrong types on the command
line; `validate` catches values that are well-typed but impossible, so a run
fails in the first second with a message naming the field, not after minutes
of data building or deep inside XLA.
"""

import math
import re

DATASETS = ("brain_phantom", "nifti_folder", "slice_folder")
# config.train.compute_dtype: the dtype of activations. Parameters, optimiser
# state, normalisation statistics, losses and network outputs stay float32.
# float16 is not offered: its narrow range needs loss scaling, bfloat16 not.
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def describe_override_error(error, argv):
  """Turns ml_collections' error for a bad `--config.x` override into a line."""
  message = str(error)
  # ml_collections wraps a KeyError's repr in an AttributeError: unwrap it.
  message = message.strip("'\"").replace("\\n", " ").replace("\\'", "'")
  message = re.sub(r"\s+", " ", message).strip()
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  field = re.match(r"'?([A-Za-z_][\w]*)'?", message)
  what = f"no field {field.group(1)!r}" if field else message
  return (f"{what} in the config ({message}). Overrides given: "
          f"{' '.join(overrides) or 'none'}. Fields are listed in configs/.")


def compute_dtype(config):
  """The activation dtype named by config.train.compute_dtype (a jnp dtype)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  name = config.train.compute_dtype
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f"config.train.compute_dtype={name!r}: use one of "
                      f"{', '.join(COMPUTE_DTYPES)}.")
  return jnp.dtype(name)


def _check(condition, field, message):
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def _is_range(value, lo=None):
  """A (low, high) pair of numbers with low <= high (and low >= lo)."""
  if not isinstance(value, (tuple, list)) or len(value) != 2:
    return False
  if not all(isinstance(v, (int, float)) for v in value):
    return False
  return value[0] <= value[1] and (lo is None or value[0] >= lo)


def validate_data(data):
  """Checks `config.data`; raises ConfigError."""
  from genjax.data import builders  # pylint: disable=g-import-not-at-top
  _check(data.dataset in DATASETS, "data.dataset",
         f"{data.dataset!r} is not one of {', '.join(DATASETS)}.")
  configs = [c.name for c in builders.DATASETS[data.dataset].BUILDER_CONFIGS]
  _check(data.builder_config in configs, "data.builder_config",
         f"{data.builder_config!r} is not a config of {data.dataset}; use one "
         f"of {', '.join(configs)} (README.md, section \"Data\").")
  if data.dataset == "slice_folder":
    from genjax.data import slices  # pylint: disable=g-import-not-at-top
    try:
      slices.compile_pattern(data.slice_pattern)
    except slices.SliceError as e:
      raise ConfigError(f"config.data.slice_pattern: {e}") from None
  if data.dataset == "nifti_folder":
    from genjax.data import layouts  # pylint: disable=g-import-not-at-top
    # Raises ConfigError naming the valid modalities of the layout.
    layouts.check_modality(layouts.LAYOUTS[data.builder_config],
                           data.get("modality"))
  elif data.get("modality") is not None:
    raise ConfigError(
        f"config.data.modality={data.modality!r}: only nifti_folder layouts "
        f"have modalities, not {data.dataset}; leave it None.")
  _check(isinstance(data.image_size, int) and data.image_size >= 8,
         "data.image_size", f"must be an integer >= 8, got {data.image_size!r}.")
  if data.slice_range is not None:
    r = data.slice_range
    _check(isinstance(r, (tuple, list)) and len(r) == 2
           and all(isinstance(v, int) for v in r) and 0 <= r[0] < r[1],
           "data.slice_range",
           f"must be None or (start, stop) with 0 <= start < stop, got {r!r}.")
  _check(0.0 <= data.min_brain_fraction < 1.0, "data.min_brain_fraction",
         f"must be in [0, 1), got {data.min_brain_fraction!r}.")
  p = tuple(data.clip_percentiles)
  _check(len(p) == 2 and p[0] < p[1] and all(
      v in builders.PERCENTILES for v in p), "data.clip_percentiles",
         f"must be two increasing values from {builders.PERCENTILES}, got "
         f"{p!r}.")
  if data.lesion_fraction is not None:
    _check(0.0 < data.lesion_fraction < 1.0, "data.lesion_fraction",
           f"must be None or in (0, 1), got {data.lesion_fraction!r}.")
  _check(data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1.")
  for name in ("train_split", "eval_split", "val_split"):
    _check(bool(data[name]), f"data.{name}", "must name a split.")


def validate_augment(aug):
  """Checks `config.augment`; raises ConfigError."""
  _check(aug.elastic_alpha >= 0 and aug.elastic_sigma > 0, "augment.elastic_*",
         "elastic_alpha must be >= 0 and elastic_sigma > 0.")
  _check(_is_range(aug.gamma_range, 1e-3), "augment.gamma_range",
         f"must be (low, high) with 0 < low <= high, got {aug.gamma_range!r}.")
  _check(_is_range(aug.crop_scale, 1e-3) and aug.crop_scale[1] <= 1.0,
         "augment.crop_scale",
         f"must be (low, high) within (0, 1], got {aug.crop_scale!r}.")
  _check(_is_range(aug.crop_ratio, 1e-3), "augment.crop_ratio",
         f"must be (low, high) with 0 < low <= high, got {aug.crop_ratio!r}.")
  _check(_is_range(aug.scale_range, 0.0), "augment.scale_range",
         f"must be (low, high) with 0 <= low <= high, got {aug.scale_range!r}.")
  _check(_is_range(aug.shift_range), "augment.shift_range",
         f"must be (low, high) with low <= high, got {aug.shift_range!r}.")


def validate_train(train):
  """Checks `config.train`; raises ConfigError."""
  for name in ("batch_size", "num_steps", "log_every", "ckpt_every",
               "keep_checkpoints", "sample_every", "num_samples"):
    value = train[name]
    _check(isinstance(value, int) and value >= 1, f"train.{name}",
           f"must be an integer >= 1, got {value!r}.")
  _check(isinstance(train.skip_nonfinite, bool), "train.skip_nonfinite",
         "must be True or False.")
  _check(train.compute_dtype in COMPUTE_DTYPES, "train.compute_dtype",
         f"{train.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)} "
         "(float16 would need loss scaling; bfloat16 has float32's range).")
  k = train.grad_accum_steps
  _check(isinstance(k, int) and k >= 1, "train.grad_accum_steps",
         f"must be an integer >= 1, got {k!r}.")
  _check(train.batch_size % k == 0, "train.grad_accum_steps",
         f"config.train.batch_size={train.batch_size} (the global batch of "
         f"one update) must be divisible by grad_accum_steps={k}: each update "
         f"averages the gradients of {k} equal micro-batches. Use a batch "
         f"size that is a multiple of {k}.")


def validate_devices(config):
  """Batch sizes must split evenly over the devices; raises ConfigError.

  The loop checks its mesh again (it may be given fewer devices), but a run
  on all devices learns it here, before any data is built or code compiled.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from genjax import parallel  # pylint: disable=g-import-not-at-top
  try:
    parallel.check_batch_size(config.train.batch_size, parallel.make_mesh(),
                              config.train.grad_accum_steps)
  except ValueError as e:
    raise ConfigError(f"{e} This job runs on {jax.device_count()} "
                      "device(s).") from None
  n_dev = jax.device_count()
  b = config.eval.batch_size
  _check(b % n_dev == 0, "eval.batch_size",
         f"{b} is not divisible by the number of devices ({n_dev}); use a "
         f"multiple of {n_dev}.")


def validate_eval(config):
  """Checks config.eval and config.anomaly; raises ConfigError."""
  # pylint: disable=g-import-not-at-top
  from genjax import anomaly
  from genjax import evaluate
  try:
    anomaly.anomaly_options(config)
    evaluate.eval_options(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate(config):
  """Checks the whole config; raises ConfigError naming the first bad field."""
  _check(bool(config.method), "method", "must name a method (ddpm, vae, gan).")
  validate_data(config.data)
  validate_augment(config.augment)
  validate_train(config.train)
  validate_devices(config)
  _check(0.0 <= config.smote.fraction <= 1.0, "smote.fraction",
         f"must be in [0, 1], got {config.smote.fraction!r}.")
  validate_eval(config)
  from genjax import methods  # pylint: disable=g-import-not-at-top
  try:
    methods.validate(config)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None
