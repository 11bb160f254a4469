"""The tf.data input pipeline shared by every method.

  load_split (TFDS, one decoded example per axial slice)
    -> preprocess: slice-range and brain-fraction filters, robust per-volume
       intensity normalisation to [-1, 1], resize/pad to image_size
    -> per-host shard -> cache -> epochs, each shuffled by (seed, epoch)
    -> optional lesion oversampling (blocks of draws fixed by (seed, block))
    -> from batch start_step (a skip inside one epoch) -> batch
    -> prefetch -> numpy dicts, fed to JAX by the training loop.

Every host reads the whole split and keeps every `process_count`-th slice
that passes the filters, so shards are disjoint, complete and balanced to
within one slice; only its own slices are normalised and resized. Randomness
comes only from the `seed` argument (tf.data's `deterministic` option is on),
so a run resumed at `start_step` sees exactly the batches it would have seen.

Batches are numpy dicts:
  image   float32 [B, S, S, 1] in [-1, 1]; background (outside the brain) -1
  mask    float32 [B, S, S, 1] lesion mask in {0, 1}
  brain   float32 [B, S, S, 1] brain mask in {0, 1}
  label   int32 [B] 0 healthy, 1 lesion
  slice   int32 [B] axial index in the volume
  subject str [B] (numpy unicode; drop it before sending a batch to devices)
  valid   bool [B] (eval_batches only) False on padding examples
"""

from collections.abc import Iterator
import math

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from genjax.data import builders


def _hide_accelerators_from_tf():
  """Keeps TensorFlow off GPUs/TPUs so that it never claims their memory.

  tf.data only feeds JAX; left alone, TensorFlow would reserve most of the
  GPU memory that JAX needs.
  """
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # RuntimeError: TF's devices are already initialised (someone used TF
      # before importing this module); nothing more can be done here.
      pass


_hide_accelerators_from_tf()


def _load(data_config, split):
  """The decoded slices of `split` (`builders.load_split`).

  TFDS would cache small splits in memory on its own; this pipeline caches
  after preprocessing instead (smaller, and built once per iterator), and
  TFDS's cache warns on every partial read such as the emptiness check.
  """
  return builders.load_split(data_config, split,
                             read_config=tfds.ReadConfig(try_autocache=False))


# --- Per-example preprocessing ------------------------------------------------


def percentile_indices(clip_percentiles):
  """Positions of (low, high) clip percentiles on the builders' grid.

  Args:
    clip_percentiles: (low, high) percentiles, e.g. (0.5, 99.5).

  Returns:
    (i_low, i_high) indices into an example's `percentiles` [17] vector.

  Raises:
    ValueError: a value is not on `builders.PERCENTILES`, or low >= high.
  """
  grid = tuple(float(p) for p in builders.PERCENTILES)
  try:
    low, high = (float(p) for p in clip_percentiles)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"data.clip_percentiles must be a (low, high) pair, got "
        f"{clip_percentiles!r}.") from e
  off_grid = [p for p in (low, high) if p not in grid]
  if off_grid or low >= high:
    raise ValueError(
        f"data.clip_percentiles={tuple(clip_percentiles)!r} must be two "
        f"increasing values from the percentile grid the datasets store: "
        f"{grid}" + (f" ({off_grid} not on it)." if off_grid else "."))
  return grid.index(low), grid.index(high)


def _keep_slice(example, slice_range, min_brain_fraction):
  """True for slices inside `slice_range` with enough brain in them."""
  keep = tf.reduce_mean(tf.cast(example["brain"] > 0, tf.float32)) >= (
      min_brain_fraction)
  if slice_range is not None:
    start, stop = slice_range
    keep &= (example["slice"] >= start) & (example["slice"] < stop)
  return keep


def _normalise(image, brain, percentiles, i_low, i_high):
  """Brain intensities to [-1, 1] between two volume percentiles.

  Args:
    image: float32 [H, W, 1] raw intensities.
    brain: [H, W, 1] brain mask.
    percentiles: float32 [17] the volume's brain-voxel percentiles.
    i_low: index of the low clip percentile in `percentiles`.
    i_high: index of the high one.

  Returns:
    float32 [H, W, 1]: clip((x - p_lo) / (p_hi - p_lo), 0, 1) mapped to
    [-1, 1] inside the brain, -1 outside it (the background value every
    model and augmentation assumes).
  """
  p_lo, p_hi = percentiles[i_low], percentiles[i_high]
  # A constant volume has p_hi == p_lo; avoid 0/0 and map it to -1.
  scale = tf.maximum(p_hi - p_lo, 1e-6)
  unit = tf.clip_by_value((image - p_lo) / scale, 0.0, 1.0)
  return tf.where(brain > 0, 2.0 * unit - 1.0, -1.0)


def _fit(image, size, method, pad_value):
  """Resizes the longer side to `size`, then pads the shorter one (centred).

  Keeping the aspect ratio keeps anatomy undistorted; padding with the
  background value makes the border indistinguishable from background.

  Args:
    image: [H, W, C] float32.
    size: output side S.
    method: tf.image.ResizeMethod ('bilinear' for images, 'nearest' for
      masks, which keeps them binary).
    pad_value: value of the padded border.

  Returns:
    [S, S, C] float32.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  scale = size / tf.cast(tf.maximum(h, w), tf.float64)
  new_h = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float64) * scale),
                                tf.int32))
  new_w = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float64) * scale),
                                tf.int32))
  # antialias only matters when shrinking (e.g. 197 -> 128 px); it is a
  # no-op for 'nearest' and exact when the size does not change.
  image = tf.image.resize(image, [new_h, new_w], method=method, antialias=True)
  top, left = (size - new_h) // 2, (size - new_w) // 2
  paddings = [[top, size - new_h - top], [left, size - new_w - left], [0, 0]]
  image = tf.pad(image, paddings, constant_values=pad_value)
  return tf.ensure_shape(image, [size, size, image.shape[-1]])


def preprocess(ds: tf.data.Dataset, data_config) -> tf.data.Dataset:
  """Filters, normalises and resizes decoded slices.

  Args:
    ds: examples from `builders.load_split` (image float32 [H, W, 1] raw,
      mask/brain uint8 [H, W, 1], label int64, subject string, slice int32,
      percentiles float32 [17], affine float32 [4, 4]).
    data_config: `config.data`; uses slice_range, min_brain_fraction,
      clip_percentiles and image_size.

  Returns:
    A dataset of dicts: image float32 [S, S, 1] in [-1, 1] (background -1),
    mask float32 [S, S, 1] and brain float32 [S, S, 1] in {0, 1}, label
    int32, subject string, slice int32; S = data_config.image_size.
  """
  return _preprocess(ds, data_config, 0, 1)


def _preprocess(ds, data_config, process_index, process_count):
  """`preprocess` that keeps one host's shard of the filtered slices.

  Sharding after the (cheap) filters keeps shards balanced; sharding before
  the (costly) normalise-and-resize map spares each host the others' work.
  """
  i_low, i_high = percentile_indices(data_config.clip_percentiles)
  slice_range = (None if data_config.slice_range is None
                 else tuple(int(s) for s in data_config.slice_range))
  min_fraction = float(data_config.min_brain_fraction)
  size = int(data_config.image_size)

  def transform(example):
    brain = tf.cast(example["brain"] > 0, tf.float32)
    mask = tf.cast(example["mask"] > 0, tf.float32)
    image = _normalise(tf.cast(example["image"], tf.float32), brain,
                       example["percentiles"], i_low, i_high)
    image = _fit(image, size, "bilinear", -1.0)
    return {
        # Bilinear weights are convex, but clip anyway against round-off.
        "image": tf.clip_by_value(image, -1.0, 1.0),
        "mask": _fit(mask, size, "nearest", 0.0),
        "brain": _fit(brain, size, "nearest", 0.0),
        "label": tf.cast(example["label"], tf.int32),
        "subject": example["subject"],
        "slice": tf.cast(example["slice"], tf.int32),
    }

  # The brain fraction is measured on the raw slice: padding would lower it.
  ds = ds.filter(lambda ex: _keep_slice(ex, slice_range, min_fraction))
  if process_count > 1:
    ds = ds.shard(process_count, process_index)
  return ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)


# --- Shared helpers -----------------------------------------------------------


def _process(process_index, process_count):
  """(index, count) of this host; defaults to JAX's view of the job."""
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(
        f"process_index={index} must be in [0, process_count={count}).")
  return index, count


def _host_batch_size(batch_size, process_count):
  """The per-host share of the global batch."""
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"The global batch size {batch_size} must be a positive multiple of "
        f"the number of processes ({process_count}): each host loads "
        f"batch_size // process_count examples. Set config.train.batch_size "
        f"(or the eval batch size) to a multiple of {process_count}.")
  return batch_size // process_count


def _options():
  options = tf.data.Options()
  options.deterministic = True
  return options


def _count(ds):
  """(number of examples, number of lesion examples) in a finite dataset."""
  counts = ds.map(lambda ex: tf.stack([1, tf.cast(ex["label"] == 1, tf.int64)])
                  ).reduce(tf.zeros([2], tf.int64), lambda a, b: a + b)
  n, n_lesion = counts.numpy().tolist()
  return n, n_lesion


def _empty_split_error(data_config, split, process_count=1):
  """A ValueError saying which filter removed every slice of `split`."""
  ds = _load(data_config, split)
  slice_range = data_config.slice_range
  count = lambda d: int(d.reduce(0, lambda n, _: n + 1).numpy())
  n_total = count(ds)
  n_range = count(ds.filter(lambda ex: _keep_slice(ex, slice_range, 0.0)))
  n_kept = count(preprocess(ds, data_config))
  where = (f"split {split!r} of {data_config.dataset}/"
           f"{data_config.builder_config}")
  if n_total == 0:
    return ValueError(f"The {where} has no slices at all.")
  if n_kept:
    return ValueError(
        f"The {where} has {n_kept} slices after the filters, fewer than the "
        f"{process_count} processes: some hosts would get none.")
  return ValueError(
      f"No slices of the {where} are left after the filters: {n_total} slices,"
      f" {n_range} of them inside data.slice_range={slice_range!r}, none of "
      f"those with a brain fraction >= data.min_brain_fraction="
      f"{data_config.min_brain_fraction}. Widen data.slice_range or lower "
      f"data.min_brain_fraction.")


def _to_numpy(batch):
  """Decodes the `subject` byte strings into a numpy str array."""
  batch = dict(batch)
  batch["subject"] = np.char.decode(batch["subject"].astype(np.bytes_),
                                    "utf-8")
  return batch


def _host_seeds(seed, process_index, num):
  """`num` int64 tf.data seeds for (seed, host).

  Hosts hold disjoint data, so one seed would do for shuffling, but distinct
  seeds keep the hosts' healthy/lesion draws independent.
  """
  state = np.random.SeedSequence([int(seed), int(process_index)])
  return [int(s >> np.uint64(1)) for s in state.generate_state(num, np.uint64)]


# Lesion oversampling fixes which draws are lesion slices block by block:
# every block of this many draws holds the lesion draws the target fraction
# asks for (cumulatively rounded), at seeded positions, so the number of
# lesion draws before any position is known without replaying them.
_BLOCK = 1024


def _seed_for(seed, index):
  """An int64 seed in [0, 2**62) drawn from (seed, index): no collisions to
  speak of between epochs or blocks, unlike seed + index."""
  pair = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 0], tf.int64), tf.cast(index, tf.int64))
  return tf.random.stateless_uniform([], seed=pair, minval=0, maxval=2**62,
                                     dtype=tf.int64)


def _epochs(ds, n, buffer_size, seed, start):
  """`ds` (n examples) repeated forever, reshuffled every epoch, from `start`.

  Epoch e is `ds.shuffle(buffer_size)` seeded by (seed, e) alone, so the
  stream is addressable: example `start` is example start % n of epoch
  start // n, reached by skipping within that one epoch (at most n - 1
  examples, however long the run has been going).

  Args:
    ds: a finite dataset (cached, so that each epoch re-reads memory).
    n: its number of examples.
    buffer_size: shuffle buffer (>= n gives a uniform permutation).
    seed: int seed of the stream.
    start: index of the first example to yield.

  Returns:
    An endless dataset.
  """
  epoch, offset = divmod(int(start), n)
  shuffled = lambda e: ds.shuffle(buffer_size, seed=_seed_for(seed, e),
                                  reshuffle_each_iteration=False)
  return tf.data.Dataset.counter(epoch).flat_map(shuffled).skip(offset)


def _lesions_before_block(block, fraction):
  """Lesion draws in blocks [0, block): round(block * _BLOCK * fraction)."""
  total = tf.cast(block, tf.float64) * (_BLOCK * fraction)
  return tf.cast(tf.floor(total + 0.5), tf.int64)


def _block_choices(seed, block, fraction):
  """int64 [_BLOCK]: 1 where draw i of `block` is a lesion slice, else 0."""
  count = (_lesions_before_block(block + 1, fraction)
           - _lesions_before_block(block, fraction))
  order = tf.argsort(tf.random.stateless_uniform(
      [_BLOCK], seed=tf.random.experimental.stateless_fold_in(
          tf.constant([seed, 1], tf.int64), tf.cast(block, tf.int64))))
  return tf.scatter_nd(order[:count, None],
                       tf.ones([count], tf.int64), [_BLOCK])


def _oversampled(healthy, lesion, counts, fraction, seeds, buffer_size,
                 start):
  """Healthy and lesion slices drawn at the given fraction, from draw `start`.

  Args:
    healthy: the healthy slices (finite, cached).
    lesion: the lesion slices (finite, cached).
    counts: (number of healthy, number of lesion slices).
    fraction: the fraction of lesion draws, in (0, 1).
    seeds: (healthy shuffle, lesion shuffle, draw positions) seeds.
    buffer_size: shuffle buffer of each class stream.
    start: index of the first draw to yield.

  Returns:
    An endless dataset: draw i is a lesion slice iff _block_choices says so,
    and each class stream is an `_epochs` stream, so every position is
    reached by skipping within one block and one epoch per class.
  """
  healthy_seed, lesion_seed, sample_seed = seeds
  block, offset = divmod(int(start), _BLOCK)
  n_lesion = int(_lesions_before_block(block, fraction)) + int(
      tf.reduce_sum(_block_choices(sample_seed, block, fraction)[:offset]))
  choices = tf.data.Dataset.counter(block).flat_map(
      lambda b: tf.data.Dataset.from_tensor_slices(
          _block_choices(sample_seed, b, fraction))).skip(offset)
  return tf.data.Dataset.choose_from_datasets(
      [_epochs(healthy, counts[0], buffer_size, healthy_seed,
               start - n_lesion),
       _epochs(lesion, counts[1], buffer_size, lesion_seed, n_lesion)],
      choices)


# --- Public iterators ---------------------------------------------------------


def train_iterator(data_config, batch_size: int, *, seed: int,
                   start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
  """This host's endless stream of training batches.

  The stream is a pure function of (data, config, seed, process index and
  count): a run resumed with `start_step=k` gets batch k, k+1, ... of the
  stream that started at step 0. Every epoch's order depends only on (seed,
  epoch), and with lesion oversampling every block of draws on (seed,
  block), so batch k is reached by skipping within one epoch (per class),
  not by replaying k batches: resuming costs the same at step 2k and 2M.

  Args:
    data_config: `config.data`; reads train_split, the preprocess fields,
      cache, shuffle_buffer, lesion_fraction and prefetch.
    batch_size: the global batch size; each host yields
      batch_size // process_count examples.
    seed: seeds the shuffle and the lesion oversampling.
    start_step: the number of batches to skip (the step a run resumes at).
    process_index: this host; default jax.process_index().
    process_count: number of hosts; default jax.process_count().

  Returns:
    An iterator of numpy dicts (see the module docstring), each with a
    leading host-batch axis.

  Raises:
    ValueError: batch_size not divisible by process_count; no slices left
      after the filters (or on this host); lesion_fraction set but the split
      has no lesion (or no healthy) slices.
  """
  index, count = _process(process_index, process_count)
  host_batch = _host_batch_size(batch_size, count)
  split = data_config.train_split
  ds = _preprocess(_load(data_config, split), data_config,
                   index, count)
  if data_config.cache:
    ds = ds.cache()
  # One pass over the split: it fills the cache and checks the class counts.
  n, n_lesion = _count(ds)
  if n == 0:
    raise _empty_split_error(data_config, split, count)

  shuffle_seed, lesion_seed, sample_seed = _host_seeds(seed, index, 3)
  buffer_size = int(data_config.shuffle_buffer)
  fraction = data_config.lesion_fraction
  # The first example of batch start_step, reached without replaying the
  # batches before it (see _epochs and _oversampled).
  start = int(start_step) * host_batch
  if fraction is None:
    ds = _epochs(ds, n, buffer_size, shuffle_seed, start)
  else:
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
      raise ValueError(
          f"data.lesion_fraction must be None or in (0, 1), got {fraction}.")
    if n_lesion == 0 or n_lesion == n:
      missing = "lesion" if n_lesion == 0 else "healthy"
      raise ValueError(
          f"data.lesion_fraction={fraction} asks to balance classes, but "
          f"split {split!r} has no {missing} slices (host {index} of {count}: "
          f"{n_lesion} lesion slices of {n}). Use a split with both (e.g. "
          f"data.train_split='train_mixed') or set data.lesion_fraction=None.")
    ds = _oversampled(ds.filter(lambda ex: ex["label"] == 0),
                      ds.filter(lambda ex: ex["label"] == 1),
                      (n - n_lesion, n_lesion), fraction,
                      (shuffle_seed, lesion_seed, sample_seed), buffer_size,
                      start)
  ds = ds.batch(host_batch, drop_remainder=True)
  ds = ds.prefetch(data_config.prefetch).with_options(_options())
  # A plain function (not a generator), so that the errors above are raised
  # at the call, not at the first next().
  return map(_to_numpy, ds.as_numpy_iterator())


def _padding_example(size):
  """An all-background example with valid=False, to fill the last batch."""
  return {
      "image": tf.fill([size, size, 1], -1.0),
      "mask": tf.zeros([size, size, 1], tf.float32),
      "brain": tf.zeros([size, size, 1], tf.float32),
      "label": tf.constant(0, tf.int32),
      "subject": tf.constant(""),
      "slice": tf.constant(-1, tf.int32),
      "valid": tf.constant(False),
  }


def eval_batches(data_config, split: str, batch_size: int, *,
                 process_index: int | None = None,
                 process_count: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over `split`: this host's share, in fixed-shape batches.

  Every batch has batch_size // process_count examples; the padding that
  fills the last one (image -1, masks 0, subject '', slice -1) is marked by
  `valid` False, so a jitted eval function sees one shape and metrics must
  be weighted by `valid`. With several hosts, every host yields the same
  number of batches (hosts with fewer slices pad more), as a multi-host jit
  needs every host at every step.

  Args:
    data_config: `config.data`.
    split: the split to read, e.g. data_config.eval_split.
    batch_size: the global batch size.
    process_index: this host; default jax.process_index().
    process_count: number of hosts; default jax.process_count().

  Returns:
    An iterator of numpy dicts (see the module docstring), including
    `valid` bool [B].

  Raises:
    ValueError: batch_size not divisible by process_count, or no slices of
      `split` left after the filters.
  """
  index, count = _process(process_index, process_count)
  host_batch = _host_batch_size(batch_size, count)
  raw = _load(data_config, split)
  if count > 1:
    # Hosts must agree on the number of batches: size them by the largest
    # shard, which needs the split's length up front.
    n = _count(preprocess(raw, data_config))[0]
    if n == 0:
      raise _empty_split_error(data_config, split)
    num_batches = math.ceil(math.ceil(n / count) / host_batch)
  elif not list(preprocess(raw, data_config).take(1)):
    # Reads only up to the first slice kept, yet fails at the call.
    raise _empty_split_error(data_config, split)
  ds = _preprocess(raw, data_config, index, count).map(
      lambda ex: {**ex, "valid": True})
  padding = tf.data.Dataset.from_tensors(
      _padding_example(int(data_config.image_size)))
  if count > 1:
    ds = ds.concatenate(padding.repeat()).take(num_batches * host_batch)
  else:
    # host_batch - 1 padding examples fill the last batch; drop_remainder
    # drops them again when the split divides evenly.
    ds = ds.concatenate(padding.repeat(host_batch - 1))
  ds = ds.batch(host_batch, drop_remainder=True)
  ds = ds.prefetch(data_config.prefetch).with_options(_options())
  return map(_to_numpy, ds.as_numpy_iterator())


def dataset_stats(data_config, split: str) -> dict:
  """Counts and ranges of `split` as the models see it (for the data report).

  Args:
    data_config: `config.data`.
    split: the split to describe.

  Returns:
    A dict: n_subjects, n_slices (after the filters), n_lesion_slices,
    n_slices_before_filters, image_shape [S, S, 1], intensity_min and
    intensity_max after normalisation (None for an empty split). An empty
    split is reported, not raised, so the report shows what the filters did.
  """
  raw = _load(data_config, split)
  n_before = int(raw.reduce(0, lambda n, _: n + 1).numpy())
  ds = preprocess(raw, data_config).map(
      lambda ex: {"subject": ex["subject"], "label": ex["label"],
                  "min": tf.reduce_min(ex["image"]),
                  "max": tf.reduce_max(ex["image"])})
  subjects, n, n_lesion, low, high = set(), 0, 0, math.inf, -math.inf
  for batch in ds.batch(256).as_numpy_iterator():
    subjects.update(batch["subject"].tolist())
    n += len(batch["label"])
    n_lesion += int((batch["label"] == 1).sum())
    low, high = min(low, float(batch["min"].min())), max(
        high, float(batch["max"].max()))
  size = int(data_config.image_size)
  return {
      "n_subjects": len(subjects),
      "n_slices": n,
      "n_lesion_slices": n_lesion,
      "n_slices_before_filters": n_before,
      "image_shape": [size, size, 1],
      "intensity_min": low if n else None,
      "intensity_max": high if n else None,
  }
