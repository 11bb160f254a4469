"""Optimisers and parameter EMA shared by every method."""

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
