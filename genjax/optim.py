"""Optimisers, parameter EMA and gradient accumulation shared by every method."""

import jax
import jax.numpy as jnp
import optax


def make_optimizer(optim_config):
  """AdamW with linear warm-up (then constant or cosine) and global-norm clip.

  Args:
    optim_config: ConfigDict with learning_rate, warmup_steps, schedule
      ('constant' | 'cosine'), decay_steps, b1, b2, weight_decay, grad_clip.

  Returns:
    An optax.GradientTransformation.
  """
  c = optim_config
  warmup = optax.linear_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1))
  if c.schedule == "constant":
    after = optax.constant_schedule(c.learning_rate)
  elif c.schedule == "cosine":
    after = optax.cosine_decay_schedule(
        c.learning_rate, max(c.decay_steps - c.warmup_steps, 1))
  else:
    raise ValueError(f"config.optim.schedule={c.schedule!r}: use 'constant' "
                     "or 'cosine'.")
  lr = optax.join_schedules([warmup, after], [c.warmup_steps])
  parts = []
  if c.grad_clip and c.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(c.grad_clip))
  parts.append(optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay))
  return optax.chain(*parts)


def ema_update(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                      ema_params, params)


def global_norm(tree):
  return optax.global_norm(tree)


def tree_is_finite(tree):
  """A scalar bool: every leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def micro_batches(batch, num):
  """Splits a batch into `num` equal micro-batches, stacked on a new axis 0.

  Micro-batch i holds examples i, i + num, i + 2 num, ... (a strided split):
  a batch sharded over devices in contiguous blocks then gives every device
  B / (num * devices) examples of every micro-batch, so nothing moves between
  devices and each micro-batch is spread over all of them.

  Args:
    batch: a pytree of [B, ...] arrays, B divisible by `num`.
    num: the number of micro-batches.

  Returns:
    The pytree with leaves [num, B / num, ...].
  """
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f"A batch of {x.shape[0]} does not split into {num} "
                       "equal micro-batches (config.train.grad_accum_steps).")
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def accumulate_gradients(grad_fn, batch, rng, num):
  """Gradient accumulation: the mean of `grad_fn` over `num` micro-batches.

  Every method's train_step computes its gradients through this, with
  num = config.train.grad_accum_steps, and then applies its optimiser(s) and
  EMA once: a loop step is one update on the whole (global) batch whatever
  `num` is, so the step counter, learning-rate and KL schedules, EMA and the
  GAN's phases mean the same for every `num`. The micro-batches run one after
  another in a `lax.scan`, so only one micro-batch's activations are alive at
  a time. (genjax/methods/gan.py measured XLA:CPU running backward
  convolutions 10-30x slower inside loop bodies; k > 1 is meant for
  accelerators, and its speed on CPU is not measured here.)

  For a loss that is a mean over equal-sized micro-batches of per-example
  terms, the mean of the micro-batch gradients is the full-batch gradient;
  what can differ is the random draws (micro-batch i uses fold_in(rng, i))
  and batch statistics (e.g. the σ-VAE's batch σ is estimated per
  micro-batch).

  Args:
    grad_fn: (batch, rng) -> (mean_part, last_part): `mean_part` a pytree of
      float arrays (loss, gradients, metrics) averaged over micro-batches;
      `last_part` a pytree kept from the last micro-batch (values that do not
      depend on the data, such as a spectral-norm power iteration; () if none).
    batch: a pytree of [B, ...] arrays.
    rng: a PRNG key.
    num: micro-batches; 1 calls grad_fn(batch, rng) as it is.

  Returns:
    (mean_part, last_part).
  """
  if num == 1:
    return grad_fn(batch, rng)

  def body(total, xs):
    micro, i = xs
    mean_part, last_part = grad_fn(micro, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, total, mean_part), last_part

  micro = micro_batches(batch, num)
  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(grad_fn, first, rng)[0]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, last = jax.lax.scan(body, zeros, (micro, jnp.arange(num)))
  return (jax.tree.map(lambda x: x / num, total),
          jax.tree.map(lambda x: x[-1], last))
