# Copyright 2025 The genjax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Samplers, registered by name: 'ddpm', 'ddim', 'pc' and 'ode'.

Every sampler has the signature

  sampler(model_fn, schedule, rng, x_start, t_start=None, *, prediction='eps',
          clip_x0=None, noise_fn=None, **options) -> x0 [B, H, W, C]

and denoises `x_start`, a sample of x at timestep index `t_start` (t_start+1
noising steps; None = T-1, i.e. sampling from noise: pass
`jax.random.normal(rng, shape)`), down to a clean image. Starting from an
intermediate index is AnoDDPM-style reconstruction (see `noise_and_denoise`).

`model_fn(x_t [B, H, W, C], t [B]) -> prediction` is the network already bound
to its parameters; t is the timestep index (int32 in the discrete samplers,
float32 s T - 1 in the continuous ones). `t_start` and the step options are
static Python values (a new value recompiles); every step runs inside
`lax.scan`, so a sampler compiles once however many steps it takes and can be
wrapped in `jax.jit`.

Step counts describe a full run from T-1. A run that starts later takes the
same step *density*: `num_steps` is scaled by (t_start+1)/T (at least 1 step)
and a `stride` stays a stride, like diffusers' img2img `strength`. So one
config serves sampling and every AnoDDPM noise level.

  ddpm  ancestral sampling (Ho et al., 2020) from q(x_s | x_t, x0_hat); with a
        stride (or num_steps) the respaced posterior of Nichol & Dhariwal.
  ddim  DDIM (Song et al., 2021) with eta (0 = deterministic) and a stride.
  pc    predictor–corrector on the reverse SDE (Song et al., 2021):
        reverse-diffusion or Euler–Maruyama predictor, Langevin corrector with
        signal-to-noise ratio `snr` (score_sde's, or annealed Langevin 'ald').
  ode   probability-flow ODE, fixed-step Heun (2nd order, 2 evaluations per
        step) or RK4, on a uniform grid in s.

The continuous samplers run on `sde` (default `VPSDE.from_schedule(schedule)`,
whose marginals equal the schedule's on its grid), from s = (t_start+1)/T to
s = 1/T (index 0), then take the denoised x0 prediction (Tweedie) there, as
DDPM's and DDIM's last steps do.
"""

import contextlib
import operator
from typing import Callable

import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np

from genjax.diffusion import losses
from genjax.diffusion import schedules as sch
from genjax.diffusion import sde as sde_lib

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
bcast = sch.bcast

_SAMPLERS: dict[str, Callable[..., Array]] = {}


def register_sampler(name: str):
  """Decorator that registers a sampler under `name`."""
  def register(fn):
    if name in _SAMPLERS:
      raise ValueError(f'Sampler {name!r} is already registered.')
    _SAMPLERS[name] = fn
    return fn
  return register


def get_sampler(name: str) -> Callable[..., Array]:
  """The sampler registered as `name` ('ddpm', 'ddim', 'pc', 'ode')."""
  if name not in _SAMPLERS:
    raise ValueError(f'Unknown sampler {name!r}; registered: {sorted(_SAMPLERS)}.')
  return _SAMPLERS[name]


def sampler_names() -> tuple[str, ...]:
  """The registered sampler names, sorted."""
  return tuple(sorted(_SAMPLERS))


def _static_t_start(t_start, num_timesteps: int) -> int:
  if t_start is None:
    return num_timesteps - 1
  try:
    t_start = operator.index(t_start)
  except TypeError:
    raise TypeError(f't_start must be a static Python int (it fixes the number of steps); '
                    f'got {type(t_start).__name__}. Pass it outside jax.jit.') from None
  if not 0 <= t_start < num_timesteps:
    raise ValueError(f't_start={t_start} must be a timestep index in [0, {num_timesteps}) '
                     f'(index t = t+1 noising steps).')
  return t_start


def scaled_num_steps(num_steps: int, t_start: int, num_timesteps: int) -> int:
  """Steps for a run from t_start when a full run from T-1 takes num_steps."""
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps} must be ≥ 1.')
  return max(1, int(round(num_steps * (t_start + 1) / num_timesteps)))


def timestep_sequence(t_start: int, num_steps: int | None = None,
                      stride: int | None = None) -> np.ndarray:
  """The decreasing timestep indices a discrete sampler evaluates the model at.

  The last step goes from the final index to the clean image (index -1).

  Args:
    t_start: first index.
    num_steps: number of model evaluations (for this run: the samplers scale
      a config's value with `scaled_num_steps` first), spread uniformly from
      t_start to 0 inclusive, at most one per index; or
    stride: step between indices (t_start, t_start - stride, …, ≥ 0).
      Neither: every index (stride 1).

  Returns:
    [N] int32 indices, strictly decreasing.
  """
  if num_steps is not None and stride is not None:
    raise ValueError('Give num_steps or stride, not both.')
  if num_steps is not None:
    if num_steps < 1:
      raise ValueError(f'num_steps={num_steps} must be ≥ 1.')
    num_steps = min(num_steps, t_start + 1)
    ts = np.round(np.linspace(t_start, 0, num_steps)).astype(np.int32)
    return np.unique(ts)[::-1].copy()
  stride = 1 if stride is None else operator.index(stride)
  if stride < 1:
    raise ValueError(f'stride={stride} must be ≥ 1.')
  return np.arange(t_start, -1, -stride, dtype=np.int32)


def _discrete_sequence(schedule, t_start, num_steps, stride) -> np.ndarray:
  n = schedule.num_timesteps
  t_start = _static_t_start(t_start, n)
  if num_steps is not None:
    num_steps = scaled_num_steps(num_steps, t_start, n)
  return timestep_sequence(t_start, num_steps, stride)


def _with_known(step_fn, schedule, known, noise_fn):
  """RePaint's known-region replacement (Lugmayr et al., 2022) around a step.

  `known` = (x_known [B, H, W, C], keep [B, H, W, C] or broadcastable, in
  {0, 1}). After every step to index t_prev, the kept pixels are replaced by
  a fresh forward sample q(x_{t_prev} | x_known) (x_known itself at the last
  step, index -1), so the model only generates where keep = 0 while seeing
  the known content, noised to its own level, everywhere else. The output
  equals x_known exactly where keep = 1. (RePaint's resampling jumps are not
  taken: one pass.)
  """
  if known is None:
    return step_fn
  x_known, keep = known
  keep = jnp.broadcast_to(keep, x_known.shape).astype(jnp.float32)

  def step(x, inp):
    t, t_prev, key = inp
    step_key, known_key = jax.random.split(key)
    x, _ = step_fn(x, (t, t_prev, step_key))
    abar = sch.alpha_bar(schedule, t_prev)
    x_k = jnp.sqrt(abar) * x_known + jnp.sqrt(1.0 - abar) * noise_fn(known_key, x.shape)
    return keep * x_k + (1.0 - keep) * x, None

  return step


# --- Long runs: chunks, progress and stopping ----------------------------------
#
# A sampler is one `lax.scan`: once launched, a 1000-step run cannot report
# progress or be stopped. Traced inside `chunked(k)`, every sampler's scan is
# instead an outer scan over chunks of at most k steps (the largest divisor of
# the step count not above k, so the step body is compiled once), with a host
# callback after each chunk. The callback reports (steps done, steps in all)
# to the function installed by `monitor` at run time and returns whether to
# stop; once it says stop, the remaining chunks are skipped (a `lax.cond`) and
# the caller, which asked for the stop, discards the result. Without a stop
# the chunked run computes exactly the same steps in the same order: its
# output is bit-identical to the plain scan's.

_CHUNK_STEPS = None  # Set (trace time) by `chunked`.
_MONITOR = None  # Set (run time) by `monitor`.


@contextlib.contextmanager
def chunked(chunk_steps: int):
  """Samplers traced inside split their scan into chunks (see above).

  Use it inside the function that is jitted, so that the jitted program is
  always traced with it, e.g.

    def sample(state, rng):
      with samplers.chunked(50):
        return method.sample(state, rng, n)
    sample = jax.jit(sample)

  Args:
    chunk_steps: the most steps of a chunk (>= 1).
  """
  global _CHUNK_STEPS
  chunk_steps = operator.index(chunk_steps)
  if chunk_steps < 1:
    raise ValueError(f'chunk_steps={chunk_steps} must be >= 1.')
  previous, _CHUNK_STEPS = _CHUNK_STEPS, chunk_steps
  try:
    yield
  finally:
    _CHUNK_STEPS = previous


@contextlib.contextmanager
def monitor(on_chunk: Callable[[int, int], bool]):
  """Calls on_chunk(steps done, steps in all) after each chunk of a chunked
  sampler run inside; on_chunk returns True to skip the remaining chunks.

  Block on the result (e.g. `jax.device_get`) inside the `with`, so every
  chunk reports while it is installed. Outside any monitor chunks report
  nowhere and never stop.
  """
  global _MONITOR
  previous, _MONITOR = _MONITOR, on_chunk
  try:
    yield
  finally:
    _MONITOR = previous


def _chunk_done(done, total, _):
  """Host side of a chunk's callback: asks the monitor whether to stop."""
  stop = False
  if _MONITOR is not None:
    stop = bool(_MONITOR(int(done), int(total)))
  return np.bool_(stop)


def chunk_size(num_steps: int, chunk_steps: int) -> int:
  """The largest divisor of num_steps that is at most chunk_steps."""
  for k in range(min(chunk_steps, num_steps), 0, -1):
    if num_steps % k == 0:
      return k
  return 1


def _scan(step_fn, x, xs):
  """`lax.scan(step_fn, x, xs)`'s final carry, chunked inside `chunked`."""
  n = jax.tree.leaves(xs)[0].shape[0]
  if _CHUNK_STEPS is None or n == 0:
    return jax.lax.scan(step_fn, x, xs)[0]
  k = chunk_size(n, _CHUNK_STEPS)
  chunks = jax.tree.map(lambda a: a.reshape((n // k, k) + a.shape[1:]), xs)

  def run(x, i, chunk):
    x = jax.lax.scan(step_fn, x, chunk)[0]
    # The callback reads a value of x, so it runs after the chunk, and the
    # next chunk waits for its answer.
    stop = io_callback(_chunk_done, jax.ShapeDtypeStruct((), jnp.bool_),
                       (i + 1) * k, n, jnp.ravel(x)[0])
    return x, stop

  def skip(x, i, chunk):
    del i, chunk
    return x, jnp.ones((), jnp.bool_)

  def outer(carry, inp):
    x, stop = carry
    return jax.lax.cond(stop, skip, run, x, *inp), None

  (x, _), _ = jax.lax.scan(
      outer, (x, jnp.zeros((), jnp.bool_)),
      (jnp.arange(n // k, dtype=jnp.int32), chunks))
  return x


def _discrete_loop(step_fn, x_start: Array, ts: np.ndarray, rng: jax.Array) -> Array:
  t_prev = np.append(ts[1:], -1).astype(np.int32)
  keys = jax.random.split(rng, len(ts))
  return _scan(step_fn, x_start, (jnp.asarray(ts), jnp.asarray(t_prev), keys))


def _predict(model_fn, schedule, x, t, t_prev, prediction, clip_x0):
  """One model call of a discrete step from index t to t_prev.

  Returns:
    (abar_t, abar_s, x0_hat, eps_hat): alpha-bar at both indices (index -1
    is the clean image, alpha-bar 1) and the model's x0 and eps estimates.
  """
  abar_t, abar_s = sch.alpha_bar(schedule, t), sch.alpha_bar(schedule, t_prev)
  out = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
  x0, eps = sch.to_x0_eps(out, prediction, x, jnp.sqrt(abar_t), jnp.sqrt(1 - abar_t), clip_x0)
  return abar_t, abar_s, x0, eps


@register_sampler('ddpm')
def ddpm_sample(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x_start: Array,
                t_start: int | None = None, *, prediction: str = 'eps',
                num_steps: int | None = None, stride: int | None = None,
                variance: str = 'small', clip_x0: float | None = None,
                noise_fn: losses.NoiseFn | None = None,
                known: tuple[Array, Array] | None = None) -> Array:
  """Ancestral sampling: x_s ~ q(x_s | x_t, x0 = x0_hat(x_t)).

  For consecutive indices (stride 1) this is DDPM's algorithm 2 with the
  schedule's posterior coefficients; with a stride it is the same posterior
  between the kept indices (respaced betas 1 - abar_t / abar_s).

  Args:
    model_fn: `model_fn(x_t, t [B] int32) -> prediction`.
    schedule: the schedule the model was trained with.
    rng: key for the noise of each step.
    x_start: [B, H, W, C] x at index t_start.
    t_start: static start index (None: T-1).
    prediction: what the model predicts: 'eps', 'x0' or 'v'.
    num_steps: model evaluations of a full run from T-1 (scaled for a later
      t_start; see `timestep_sequence`).
    stride: index stride (see `timestep_sequence`).
    variance: 'small' (posterior variance, beta-tilde) or 'large' (beta).
    clip_x0: clip x0 predictions to [-clip_x0, clip_x0] (e.g. 1 for data
      in [-1, 1]).
    noise_fn: noise of each step (default Gaussian).
    known: optional (x_known, keep): inpaint, keeping x_known where keep = 1
      (see `_with_known`).

  Returns:
    [B, H, W, C] samples.
  """
  if variance not in ('small', 'large'):
    raise ValueError(f"variance={variance!r} must be 'small' or 'large'.")
  ts = _discrete_sequence(schedule, t_start, num_steps, stride)
  noise_fn = noise_fn or losses.gaussian_noise

  def step(x, inp):
    t, t_prev, key = inp
    abar_t, abar_s, x0, _ = _predict(model_fn, schedule, x, t, t_prev, prediction, clip_x0)
    c_x0, c_xt, var = sch.posterior_coefficients(abar_t, abar_s)
    mean = c_x0 * x0 + c_xt * x
    if variance == 'large':
      var = 1.0 - abar_t / abar_s  # The (respaced) beta.
    # No noise on the last step (to the clean image), as in DDPM.
    var = jnp.where(t_prev >= 0, var, 0.0)
    return mean + jnp.sqrt(var) * noise_fn(key, x.shape), None

  return _discrete_loop(_with_known(step, schedule, known, noise_fn), x_start, ts, rng)


@register_sampler('ddim')
def ddim_sample(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x_start: Array,
                t_start: int | None = None, *, prediction: str = 'eps', eta: float = 0.0,
                num_steps: int | None = None, stride: int | None = None,
                clip_x0: float | None = None,
                noise_fn: losses.NoiseFn | None = None,
                known: tuple[Array, Array] | None = None) -> Array:
  """DDIM: x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma²) eps_hat + sigma z.

  sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s);
  eta = 0 is deterministic (the probability-flow ODE's Euler step in
  (x / alpha, sigma / alpha)), eta = 1 is ancestral sampling.

  Args:
    model_fn: `model_fn(x_t, t [B] int32) -> prediction`.
    schedule: the schedule the model was trained with.
    rng: key for the noise (used when eta > 0).
    x_start: [B, H, W, C] x at index t_start.
    t_start: static start index (None: T-1).
    prediction: 'eps', 'x0' or 'v'.
    eta: stochasticity in [0, 1].
    num_steps: model evaluations of a full run from T-1 (scaled for a later
      t_start; see `timestep_sequence`).
    stride: index stride (see `timestep_sequence`).
    clip_x0: optional clip of the x0 predictions.
    noise_fn: noise of each step when eta > 0 (default Gaussian).
    known: optional (x_known, keep): inpaint, keeping x_known where keep = 1
      (see `_with_known`).

  Returns:
    [B, H, W, C] samples.
  """
  ts = _discrete_sequence(schedule, t_start, num_steps, stride)
  noise_fn = noise_fn or losses.gaussian_noise

  def step(x, inp):
    t, t_prev, key = inp
    abar_t, abar_s, x0, eps = _predict(model_fn, schedule, x, t, t_prev, prediction, clip_x0)
    sigma = eta * jnp.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
    x = (jnp.sqrt(abar_s) * x0 + jnp.sqrt(jnp.maximum(1 - abar_s - sigma ** 2, 0.0)) * eps)
    if not (isinstance(eta, (int, float)) and eta == 0):  # Skip the draw when static 0.
      x = x + sigma * noise_fn(key, x.shape)
    return x, None

  return _discrete_loop(_with_known(step, schedule, known, noise_fn), x_start, ts, rng)


# --- Continuous-time samplers -------------------------------------------------


def _time_grid(sde: sde_lib.SDE, t_start: int, num_steps: int) -> np.ndarray:
  """Uniform grid in s from (t_start+1)/T down to 1/T (index 0)."""
  n = sde.num_timesteps
  steps = scaled_num_steps(num_steps, t_start, n)
  return np.linspace((t_start + 1) / n, 1.0 / n, steps + 1).astype(np.float32)


def _reverse_diffusion_predictor(rsde, x, s, ds, key, noise_fn):
  f, g = rsde.discretize(x, s, ds)
  return x - f + bcast(g, x) * noise_fn(key, x.shape)


def _euler_maruyama_predictor(rsde, x, s, ds, key, noise_fn):
  drift, diffusion = rsde.sde(x, s)
  return x - drift * ds + bcast(diffusion * jnp.sqrt(ds), x) * noise_fn(key, x.shape)


def _no_predictor(rsde, x, s, ds, key, noise_fn):
  del rsde, s, ds, key, noise_fn
  return x


PREDICTORS = {'reverse_diffusion': _reverse_diffusion_predictor,
              'euler_maruyama': _euler_maruyama_predictor,
              'none': _no_predictor}


def _langevin_corrector(sde, score_fn, x, s, key, snr, n_steps, noise_fn):
  """score_sde's Langevin corrector: step 2 alpha (snr ||z|| / ||score||)².

  As in score_sde the norms are averaged over the batch. A per-example step
  size would depend on the example's own state, and such a state-dependent
  step biases Langevin's stationary distribution by O(1 / pixels) (measured:
  +20% variance for 4×4 Gaussian images).
  """
  def one(i, x):
    grad = score_fn(x, s)
    z = noise_fn(jax.random.fold_in(key, i), x.shape)
    norm = lambda a: jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a).reshape(a.shape[0], -1), axis=-1)))
    step = 2.0 * sde.langevin_alpha(s) * (snr * norm(z) / norm(grad)) ** 2
    return x + step * grad + jnp.sqrt(2.0 * step) * z
  return jax.lax.fori_loop(0, n_steps, one, x)


def _annealed_langevin_corrector(sde, score_fn, x, s, key, snr, n_steps, noise_fn):
  """Annealed Langevin dynamics (Song & Ermon, 2019): step 2 alpha (snr sigma(s))².

  The step does not depend on x, so the examples of a batch stay independent.
  """
  step = 2.0 * sde.langevin_alpha(s) * (snr * sde.alpha_sigma(s)[1]) ** 2
  def one(i, x):
    z = noise_fn(jax.random.fold_in(key, i), x.shape)
    return x + step * score_fn(x, s) + jnp.sqrt(2.0 * step) * z
  return jax.lax.fori_loop(0, n_steps, one, x)


def _no_corrector(sde, score_fn, x, s, key, snr, n_steps, noise_fn):
  del sde, score_fn, s, key, snr, n_steps, noise_fn
  return x


CORRECTORS = {'langevin': _langevin_corrector, 'ald': _annealed_langevin_corrector,
              'none': _no_corrector}


@register_sampler('pc')
def pc_sample(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x_start: Array,
              t_start: int | None = None, *, prediction: str = 'eps',
              sde: sde_lib.SDE | None = None, num_steps: int | None = None,
              predictor: str = 'reverse_diffusion', corrector: str = 'langevin',
              snr: float = 0.16, n_corrector_steps: int = 1, clip_x0: float | None = None,
              noise_fn: losses.NoiseFn | None = None) -> Array:
  """Predictor–corrector sampling of the reverse SDE.

  Each of `num_steps` steps from s to s - ds runs `n_corrector_steps`
  Langevin steps at s (step size 2 alpha (snr ||z|| / ||score||)²) and then
  one predictor step; the result is denoised with the model's x0 prediction at
  s = 1/T.

  Langevin steps target p_s itself, so from an intermediate t_start they also
  pull a sample away from its x_start: with the exact Gaussian denoiser at
  t = 200 the output is uncorrelated with the image that was noised. For
  AnoDDPM-style reconstruction prefer 'ddpm'/'ddim', or corrector='none'.

  Args:
    model_fn: `model_fn(x_t, label [B] float32) -> prediction`, label = s T - 1.
    schedule: the schedule the model was trained with (defines the default SDE).
    rng: key.
    x_start: [B, H, W, C] x at index t_start (time s = (t_start+1)/T).
    t_start: static start index (None: T-1).
    prediction: 'eps', 'x0' or 'v'.
    sde: the SDE (default `VPSDE.from_schedule(schedule)`).
    num_steps: predictor steps of a full run from T-1 (default T, about one
      per index), scaled for a later t_start.
    predictor: 'reverse_diffusion', 'euler_maruyama' or 'none'.
    corrector: 'langevin' (score_sde), 'ald' (annealed Langevin) or 'none'.
    snr: Langevin signal-to-noise ratio (score_sde: 0.16 for VE, 0.01 for VP
      on CIFAR-10).
    n_corrector_steps: Langevin steps per predictor step.
    clip_x0: optional clip of the x0 predictions.
    noise_fn: noise of the predictor and corrector (default Gaussian).

  Returns:
    [B, H, W, C] samples.
  """
  if predictor not in PREDICTORS or corrector not in CORRECTORS:
    raise ValueError(f'predictor={predictor!r} must be one of {sorted(PREDICTORS)} and '
                     f'corrector={corrector!r} one of {sorted(CORRECTORS)}.')
  sde = sde if sde is not None else sde_lib.VPSDE.from_schedule(schedule)
  t_start = _static_t_start(t_start, sde.num_timesteps)
  grid = _time_grid(sde, t_start, num_steps or sde.num_timesteps)
  noise_fn = noise_fn or losses.gaussian_noise
  score_fn = sde_lib.score_fn_from_model(model_fn, sde, prediction, clip_x0)
  rsde = sde.reverse(score_fn)
  predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]

  def step(x, inp):
    s, s_next, key = inp
    c_key, p_key = jax.random.split(key)
    x = correct(sde, score_fn, x, s, c_key, snr, n_corrector_steps, noise_fn)
    return predict(rsde, x, s, s - s_next, p_key, noise_fn), None

  keys = jax.random.split(rng, len(grid) - 1)
  x = _scan(step, x_start, (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]), keys))
  x0, _ = sde_lib.model_x0_eps(model_fn, sde, prediction, x, grid[-1], clip_x0)
  return x0


@register_sampler('ode')
def ode_sample(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x_start: Array,
               t_start: int | None = None, *, prediction: str = 'eps',
               sde: sde_lib.SDE | None = None, num_steps: int = 100, method: str = 'heun',
               clip_x0: float | None = None, noise_fn: losses.NoiseFn | None = None) -> Array:
  """Integrates the probability-flow ODE dx/ds = f - ½ g² score with fixed steps.

  Deterministic: x_start fixes the sample (rng and noise_fn are unused and
  only keep the common signature).

  Args:
    model_fn: `model_fn(x_t, label [B] float32) -> prediction`, label = s T - 1.
    schedule: the schedule the model was trained with (defines the default SDE).
    rng: unused.
    x_start: [B, H, W, C] x at index t_start (time s = (t_start+1)/T).
    t_start: static start index (None: T-1).
    prediction: 'eps', 'x0' or 'v'.
    sde: the SDE (default `VPSDE.from_schedule(schedule)`).
    num_steps: uniform steps in s of a full run from T-1 (scaled for a later
      t_start), from (t_start+1)/T to 1/T.
    method: 'heun' (2 model evaluations per step) or 'rk4' (4).
    clip_x0: optional clip of the x0 predictions.
    noise_fn: unused.

  Returns:
    [B, H, W, C] samples.
  """
  del rng, noise_fn
  if method not in ('heun', 'rk4'):
    raise ValueError(f"method={method!r} must be 'heun' or 'rk4'.")
  sde = sde if sde is not None else sde_lib.VPSDE.from_schedule(schedule)
  t_start = _static_t_start(t_start, sde.num_timesteps)
  grid = _time_grid(sde, t_start, num_steps)
  rsde = sde.reverse(sde_lib.score_fn_from_model(model_fn, sde, prediction, clip_x0),
                     probability_flow=True)
  f = lambda x, s: rsde.sde(x, s)[0]

  def step(x, inp):
    s, s_next = inp
    h = s_next - s  # Negative: integrating backwards in time.
    if method == 'heun':
      d1 = f(x, s)
      d2 = f(x + h * d1, s_next)
      return x + 0.5 * h * (d1 + d2), None
    k1 = f(x, s)
    k2 = f(x + 0.5 * h * k1, s + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, s + 0.5 * h)
    k4 = f(x + h * k3, s_next)
    return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), None

  x = _scan(step, x_start, (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:])))
  x0, _ = sde_lib.model_x0_eps(model_fn, sde, prediction, x, grid[-1], clip_x0)
  return x0


def noise_and_denoise(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x0: Array,
                      noise_level: int, sampler: str = 'ddpm',
                      noise_fn: losses.NoiseFn | None = None, **sampler_kwargs) -> Array:
  """AnoDDPM-style reconstruction: noise x0 by `noise_level` steps, denoise back.

  Args:
    model_fn: `model_fn(x_t, t [B]) -> prediction`.
    schedule: the schedule.
    rng: key.
    x0: [B, H, W, C] images.
    noise_level: number of noising steps n ∈ [1, T] (index n - 1), static.
    sampler: registered sampler name.
    noise_fn: forward and sampler noise (default Gaussian; simplex for AnoDDPM).
    **sampler_kwargs: options of the sampler (prediction, stride, eta, ...).

  Returns:
    [B, H, W, C] reconstructions.
  """
  t = sch.noise_level_to_index(noise_level, schedule.num_timesteps)
  noise_rng, sample_rng = jax.random.split(rng)
  noise = (noise_fn or losses.gaussian_noise)(noise_rng, x0.shape)
  x_t = sch.q_sample(schedule, x0, jnp.full((x0.shape[0],), t), noise)
  return get_sampler(sampler)(model_fn, schedule, sample_rng, x_t, t, noise_fn=noise_fn,
                              **sampler_kwargs)


# --- One network call per noise level (AnoDDPM variants) -----------------------


def _noised(schedule: sch.Schedule, rng: jax.Array, x0: Array, t: Array,
            noise_fn: losses.NoiseFn | None, region: Array | None = None) -> Array:
  """x_t of the forward process, drawn with `noise_and_denoise`'s key split.

  With a `region` mask (in {0, 1}), only those pixels are noised and the
  rest stay x0 (pDDPM's clean context), as in `losses.denoising_loss`.
  """
  noise_rng, _ = jax.random.split(rng)
  noise = (noise_fn or losses.gaussian_noise)(noise_rng, x0.shape)
  x_t = sch.q_sample(schedule, x0, jnp.full((x0.shape[0],), t), noise)
  if region is None:
    return x_t
  region = jnp.broadcast_to(region, x0.shape).astype(x_t.dtype)
  return region * x_t + (1.0 - region) * x0


def _x0_hat(model_fn, schedule, x_t, t, prediction, clip_x0):
  """The model's x0 estimate at index t (static or traced) in one call."""
  tb = jnp.full((x_t.shape[0],), t, jnp.int32)
  alpha, sigma = sch.alpha_sigma(schedule, tb)
  x0, _ = sch.to_x0_eps(model_fn(x_t, tb), prediction, x_t, alpha, sigma, clip_x0)
  return x0


def one_step_x0(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x0: Array,
                noise_level: int, *, prediction: str = 'eps', clip_x0: float | None = None,
                noise_fn: losses.NoiseFn | None = None, region: Array | None = None) -> Array:
  """One-step reconstruction: noise x0 by `noise_level` steps, predict x0 once.

  x_t = alpha x0 + sigma noise is drawn exactly as `noise_and_denoise` draws
  it from the same rng (so both reconstructions start from the same x_t);
  then x0_hat = (x_t - sigma eps_hat) / alpha (or the x0 / v formula), one
  network call. With the exact eps-predictor this is Tweedie's E[x0 | x_t].

  Args:
    model_fn: `model_fn(x_t, t [B] int32) -> prediction`.
    schedule: the schedule.
    rng: key.
    x0: [B, H, W, C] images.
    noise_level: noising steps n ∈ [1, T] (index n - 1), static.
    prediction: 'eps', 'x0' or 'v'.
    clip_x0: optional clip of the x0 prediction.
    noise_fn: forward noise (default Gaussian).
    region: optional mask in {0, 1}: noise only there (see `_noised`); the
      estimate is returned for every pixel, the caller keeps the region's.

  Returns:
    [B, H, W, C] x0 estimates.
  """
  t = sch.noise_level_to_index(noise_level, schedule.num_timesteps)
  x_t = _noised(schedule, rng, x0, t, noise_fn, region)
  return _x0_hat(model_fn, schedule, x_t, t, prediction, clip_x0)


def aggregate_x0_error(model_fn: ModelFn, schedule: sch.Schedule, rng: jax.Array, x0: Array,
                       noise_levels, *, prediction: str = 'eps', clip_x0: float | None = None,
                       noise_fn: losses.NoiseFn | None = None) -> tuple[Array, Array]:
  """ANDi-style score: the one-step x0 error averaged over many noise levels.

  For each level n (one network call each, under `lax.map`, so it compiles
  once): x_t drawn with key jax.random.split(rng, len(levels))[i] (an
  independent draw per level), x0_hat(x_t) as in `one_step_x0`, and the
  error |x0_hat - x0|. ANDi (Frotscher et al., 2024) aggregates the gap
  between the model's and the true posterior means of x_{t-1}, i.e. the
  eps-prediction error up to a per-t factor; the x0 error used here is
  (sigma / alpha) |eps_hat - eps| before clipping, so it stays in the units
  of the reconstruction residual ([0, 2] for data in [-1, 1]) and shares its
  thresholds and histograms.

  Args:
    model_fn: `model_fn(x_t, t [B] int32) -> prediction`.
    schedule: the schedule.
    rng: key.
    x0: [B, H, W, C] images.
    noise_levels: sequence of noising steps n ∈ [1, T].
    prediction: 'eps', 'x0' or 'v'.
    clip_x0: optional clip of the x0 predictions.
    noise_fn: forward noise (default Gaussian).

  Returns:
    (mean x0_hat, mean |x0_hat - x0|), each [B, H, W, C].
  """
  ts = np.asarray([sch.noise_level_to_index(n, schedule.num_timesteps)
                   for n in noise_levels], np.int32)
  keys = jax.random.split(rng, len(ts))

  def one(inp):
    t, key = inp
    x0_hat = _x0_hat(model_fn, schedule, _noised(schedule, key, x0, t, noise_fn), t,
                     prediction, clip_x0)
    return x0_hat, jnp.abs(x0_hat - x0)

  x0_hats, errors = jax.lax.map(one, (jnp.asarray(ts), keys))
  return jnp.mean(x0_hats, axis=0), jnp.mean(errors, axis=0)


def network_calls(sampler: str, num_timesteps: int, t_start: int | None = None, *,
                  num_steps: int | None = None, stride: int | None = None,
                  n_corrector_steps: int = 1, predictor: str = 'reverse_diffusion',
                  corrector: str = 'langevin', method: str = 'heun', **unused) -> int:
  """Network evaluations of one run of `sampler` from index t_start (per image).

  'one_step' is `one_step_x0` (1). Other options of the samplers that do not
  change the count (eta, clip_x0, snr, ...) are accepted and ignored.
  """
  del unused
  t_start = _static_t_start(t_start, num_timesteps)
  if sampler == 'one_step':
    return 1
  if sampler in ('ddpm', 'ddim'):
    if num_steps is not None:
      num_steps = scaled_num_steps(num_steps, t_start, num_timesteps)
    return len(timestep_sequence(t_start, num_steps, stride))
  if sampler == 'pc':
    steps = scaled_num_steps(num_steps or num_timesteps, t_start, num_timesteps)
    per_step = ((predictor != 'none') + (corrector != 'none') * n_corrector_steps)
    return steps * per_step + 1  # + the final x0 prediction.
  if sampler == 'ode':
    steps = scaled_num_steps(num_steps or 100, t_start, num_timesteps)
    return steps * {'heun': 2, 'rk4': 4}[method] + 1
  raise ValueError(f'Unknown sampler {sampler!r}; registered: {sorted(_SAMPLERS)}.')
