"""Tests of genjax.diffusion against closed forms and exact Gaussian denoisers.

The samplers are checked on data whose per-pixel distribution is a known
Gaussian N(mu, sd²), with the *exact* denoiser plugged in as the "network":
for x_t = a x0 + s eps, E[x0 | x_t] = mu + a sd² / V (x_t - a mu) and
E[eps | x_t] = s / V (x_t - a mu), V = a² sd² + s². A correct sampler then
returns samples whose mean and variance match mu and sd² up to Monte-Carlo
error and its (small, measured) discretisation bias.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.diffusion import losses
from genjax.diffusion import samplers
from genjax.diffusion import schedules as sch
from genjax.diffusion import sde as sde_lib
from genjax.diffusion import simplex

T = 1000
B = 2000  # Samples per sampler test: 2000 × 16 independent pixels.
MU = jnp.linspace(-0.5, 0.5, 16).reshape(1, 4, 4, 1)
SD = jnp.linspace(0.2, 0.6, 16).reshape(1, 4, 4, 1)
# Monte-Carlo standard error of the pooled variance ratio is sqrt(2 / 32000) =
# 0.008. The samplers' measured discretisation biases at the settings below are
# at most 3% (DDPM's small posterior variance: -2.1% exactly; Langevin at
# snr 0.16: +2.7%), so 5% separates them from real errors (see
# test_gaussian_check_detects_a_wrong_denoiser).
VAR_TOL = 0.05
# Per-pixel z-score of the mean: standard error 1 / sqrt(B) = 0.022.
MEAN_TOL = 5.0 / math.sqrt(B)


def key(seed):
  # 'rbg' keys: XLA compiles their draws several times faster than threefry's
  # on CPU, and compilation dominates these tests.
  return jax.random.key(seed, impl='rbg')


@pytest.fixture(scope='module')
def linear():
  return sch.make_schedule('linear', T)


def exact_denoiser(alpha_sigma_fn, prediction='eps', sd_scale=1.0):
  """The optimal network for N(MU, SD²) data; alpha_sigma_fn(label) -> (a, s)."""
  sd = SD * sd_scale

  def model_fn(x, label):
    a, s = alpha_sigma_fn(label)
    a, s = sch.bcast(a, x), sch.bcast(s, x)
    v = a * a * sd * sd + s * s
    eps = s / v * (x - a * MU)
    x0 = MU + a * sd * sd / v * (x - a * MU)
    return {'eps': eps, 'x0': x0, 'v': a * eps - s * x0}[prediction]
  return model_fn


def discrete_alpha_sigma(schedule):
  return lambda label: sch.alpha_sigma(schedule, label.astype(jnp.int32))


def continuous_alpha_sigma(sde):
  return lambda label: sde.alpha_sigma((label + 1.0) / sde.num_timesteps)


def gaussian_errors(x):
  """(max per-pixel |mean z-score|, pooled E[z²]) of samples x vs N(MU, SD²)."""
  z = (x - MU) / SD
  return float(jnp.max(jnp.abs(jnp.mean(z, axis=0)))), float(jnp.mean(z * z))


def assert_gaussian(x, what):
  mean_err, var_ratio = gaussian_errors(x)
  assert np.all(np.isfinite(np.asarray(x))), what
  assert mean_err < MEAN_TOL, f'{what}: mean off by {mean_err:.3f} sd (tol {MEAN_TOL:.3f})'
  assert abs(var_ratio - 1.0) < VAR_TOL, f'{what}: variance ratio {var_ratio:.4f}'


# --- Schedules and the forward process ----------------------------------------


def test_linear_schedule_is_ddpm(linear):
  betas = np.linspace(1e-4, 0.02, T)
  np.testing.assert_allclose(linear.betas, betas, rtol=1e-6)
  ac = np.cumprod(1.0 - betas)
  np.testing.assert_allclose(linear.alphas_cumprod, ac, rtol=1e-5)
  np.testing.assert_allclose(linear.alphas_cumprod_prev, np.append(1.0, ac[:-1]), rtol=1e-5)
  np.testing.assert_allclose(linear.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - ac), rtol=1e-5)
  np.testing.assert_allclose(linear.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / ac - 1), rtol=1e-4)
  assert linear.num_timesteps == T and linear.kind == 'linear'


def test_cosine_schedule_is_nichol_dhariwal():
  schedule = sch.make_schedule('cosine', T)
  s = 0.008
  f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(1, T + 1)  # Index i holds abar after i+1 steps: f(i+1) / f(0).
  expected = f(t) / f(0)
  ac = np.asarray(schedule.alphas_cumprod, np.float64)
  # Away from the end, where max_beta = 0.999 clips the betas, it is eq. 17.
  np.testing.assert_allclose(ac[:-5], expected[:-5], rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(ac, np.cumprod(1 - np.asarray(schedule.betas, np.float64)),
                             rtol=1e-4, atol=1e-12)
  assert float(schedule.betas.max()) <= 0.999 + 1e-6
  assert 0 < ac[-1] < 1e-6


def test_short_linear_schedule_still_reaches_noise():
  # T = 100 rescales the betas by 10, so x_{T-1} is still (nearly) pure noise.
  schedule = sch.make_schedule('linear', 100)
  assert float(schedule.alphas_cumprod[-1]) < 1e-3
  np.testing.assert_allclose(np.asarray(schedule.betas)[[0, -1]], [1e-3, 0.2], rtol=1e-6)


def test_bad_betas_and_noise_levels_are_rejected():
  with pytest.raises(ValueError, match='betas'):
    sch.schedule_from_betas(np.array([0.1, 1.5]))
  with pytest.raises(ValueError, match='Unknown schedule'):
    sch.make_schedule('quadratic')
  assert sch.noise_level_to_index(200, T) == 199
  with pytest.raises(ValueError, match='noise_level'):
    sch.noise_level_to_index(0, T)


def test_q_sample_marginals_match_closed_form(linear):
  # Many draws of x_t for fixed x0 at a few t: mean sqrt(abar) x0, var 1 - abar.
  n = 20000
  x0 = jnp.array([-1.0, -0.3, 0.4, 1.0]).reshape(1, 2, 2, 1)
  for t in (0, 99, 499, 999):
    noise = jax.random.normal(key(t), (n, 2, 2, 1))
    x_t = sch.q_sample(linear, jnp.broadcast_to(x0, noise.shape), jnp.full((n,), t), noise)
    abar = float(np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t])
    np.testing.assert_allclose(x_t.mean(0), math.sqrt(abar) * x0[0],
                               atol=5 * math.sqrt((1 - abar) / n))
    np.testing.assert_allclose(x_t.var(0), np.full((2, 2, 1), 1 - abar),
                               rtol=5 * math.sqrt(2 / n))


def test_posterior_is_the_gaussian_conditional(linear):
  # q(x_{t-1} | x_t, x0) from the joint Gaussian of (x_{t-1}, x_t) given x0.
  ac = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
  for t in (1, 10, 500, 999):
    a_t, abar_t, abar_prev = ac[t] / ac[t - 1], ac[t], ac[t - 1]
    slope = math.sqrt(a_t) * (1 - abar_prev) / (1 - abar_t)  # Cov / Var(x_t).
    resid = (1 - abar_prev) - slope ** 2 * (1 - abar_t)
    x0_coef = math.sqrt(abar_prev) - slope * math.sqrt(abar_t)
    np.testing.assert_allclose(linear.posterior_mean_coef2[t], slope, rtol=1e-4)
    np.testing.assert_allclose(linear.posterior_mean_coef1[t], x0_coef, rtol=1e-3)
    np.testing.assert_allclose(linear.posterior_variance[t], resid, rtol=1e-3)
    c_x0, c_xt, var = sch.posterior_coefficients(linear.alphas_cumprod[t],
                                                 linear.alphas_cumprod[t - 1])
    np.testing.assert_allclose([c_x0, c_xt, var], [x0_coef, slope, resid], rtol=2e-3)
  # Index 0 goes to the clean image: no noise, mean x0.
  c_x0, c_xt, var = sch.posterior_coefficients(linear.alphas_cumprod[0], 1.0)
  np.testing.assert_allclose([c_x0, c_xt, var], [1.0, 0.0, 0.0], atol=1e-6)
  mean, var = sch.q_posterior(linear, jnp.ones((2, 1, 1, 1)), jnp.zeros((2, 1, 1, 1)),
                              jnp.array([0, 0]))
  np.testing.assert_allclose(mean, 1.0, rtol=1e-5)
  np.testing.assert_allclose(var, 0.0)


@pytest.mark.parametrize('prediction', sch.PREDICTIONS)
@pytest.mark.parametrize('alpha,sigma', [(0.8, 0.6), (0.05, 0.9987), (1.0, 3.0)])
def test_prediction_conversions_roundtrip(prediction, alpha, sigma):
  k1, k2 = jax.random.split(key(0))
  x0 = jax.random.normal(k1, (3, 4, 4, 2))
  eps = jax.random.normal(k2, x0.shape)
  a = jnp.full((3,), alpha)  # [B] coefficients broadcast over pixels.
  s = jnp.full((3,), sigma)
  x_t = sch.bcast(a, x0) * x0 + sch.bcast(s, x0) * eps
  out = sch.target(prediction, x0, eps, a, s)
  x0_hat, eps_hat = sch.to_x0_eps(out, prediction, x_t, a, s)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-4 / alpha)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-4)
  np.testing.assert_allclose(sch.v_from_x0_eps(x0, eps, a, s),
                             alpha * eps - sigma * x0, atol=1e-5)


def test_clip_x0_recomputes_eps():
  x_t = jnp.full((1, 1, 1, 1), 3.0)
  x0, eps = sch.to_x0_eps(jnp.zeros_like(x_t), 'eps', x_t, 0.6, 0.8, clip_x0=1.0)
  np.testing.assert_allclose(x0, 1.0)
  np.testing.assert_allclose(0.6 * x0 + 0.8 * eps, x_t, rtol=1e-6)
  with pytest.raises(ValueError, match='prediction'):
    sch.target('score', x0, eps, 0.6, 0.8)


# --- Loss ----------------------------------------------------------------------


@pytest.mark.parametrize('prediction', ['eps', 'v'])
def test_loss_of_exact_denoiser_is_its_analytic_minimum(linear, prediction):
  # With E[eps | x_t] the eps-loss is E Var(eps | x_t) = a² sd² / V per pixel;
  # the v-loss is Var(v | x_t) = sd² / V. A network predicting 0 scores E eps² = 1.
  n = 4000
  model = exact_denoiser(discrete_alpha_sigma(linear), prediction)
  x0 = MU + SD * jax.random.normal(key(1), (n, 4, 4, 1))
  loss_fn = jax.jit(lambda x0, rng, t, w: losses.denoising_loss(
      model, linear, x0, rng, prediction, weighting=w, t=t), static_argnums=3)
  for t in (20, 300, 900):
    tt = jnp.full((n,), t)
    a, s = (float(c) for c in sch.alpha_sigma(linear, t))
    v = a * a * SD ** 2 + s * s
    minimum = float(jnp.mean(a * a * SD ** 2 / v if prediction == 'eps' else SD ** 2 / v))
    loss = loss_fn(x0, key(t), tt, 'none')
    assert loss.shape == (n,)
    np.testing.assert_allclose(float(loss.mean()), minimum, rtol=0.05)
    weighted = loss_fn(x0, key(t), tt, 'min_snr')
    snr = a * a / (s * s)
    w = min(snr, 5.0) / (snr if prediction == 'eps' else snr + 1.0)
    np.testing.assert_allclose(weighted, w * loss, rtol=1e-4)
  zero_loss = losses.denoising_loss(lambda x, t: jnp.zeros_like(x), linear, x0,
                                    key(0), 'eps')
  np.testing.assert_allclose(float(zero_loss.mean()), 1.0, rtol=0.05)


def test_loss_draws_t_and_accepts_simplex_noise(linear):
  x0 = jnp.zeros((4, 16, 16, 1))
  loss = jax.jit(lambda x0: losses.denoising_loss(
      lambda x, t: x, linear, x0, key(0), noise_fn=simplex.simplex_noise_fn()))(x0)
  assert loss.shape == (4,) and bool(jnp.all(loss > 0))
  with pytest.raises(ValueError, match='weighting'):
    losses.denoising_loss(lambda x, t: x, linear, x0, key(0), weighting='snr2')


# --- SDEs ------------------------------------------------------------------------


def test_vpsde_from_schedule_matches_schedule_on_its_grid(linear):
  vp = sde_lib.VPSDE.from_schedule(linear)
  s = vp.index_to_time(jnp.arange(T))
  alpha, sigma = vp.alpha_sigma(s)
  np.testing.assert_allclose(alpha, linear.sqrt_alphas_cumprod, rtol=1e-5)
  np.testing.assert_allclose(sigma, linear.sqrt_one_minus_alphas_cumprod, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(vp.time_to_label(s), np.arange(T), atol=1e-3)
  # One grid step of the exact transition is DDPM's forward step.
  idx = jnp.array([10, 700])
  betas = linear.betas[idx]
  f, g = vp.discretize(jnp.ones((2, 1, 1, 1)), s[idx], 1.0 / T)
  np.testing.assert_allclose(g ** 2, betas, rtol=2e-3)
  np.testing.assert_allclose(f[:, 0, 0, 0], np.sqrt(1 - betas) - 1, rtol=2e-3)
  # beta(s) ≈ T betas on the segment below each grid point.
  np.testing.assert_allclose(vp.beta(s[idx]), T * betas, rtol=0.02)


def test_linear_vpsde_is_the_continuous_linear_schedule(linear):
  vp = sde_lib.VPSDE.linear(0.1, 20.0, T)
  s = (jnp.arange(T) + 1.0) / T
  alpha, sigma = vp.alpha_sigma(s)
  np.testing.assert_allclose(alpha, linear.sqrt_alphas_cumprod, atol=3e-3)
  np.testing.assert_allclose(sigma, linear.sqrt_one_minus_alphas_cumprod, atol=3e-3)
  # Its drift and diffusion are score_sde's.
  x = jnp.full((1, 1, 1, 1), 2.0)
  drift, diffusion = vp.sde(x, 0.5)
  np.testing.assert_allclose(drift, -0.5 * 10.05 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(diffusion, math.sqrt(10.05), rtol=1e-6)
  # d log alphā / ds = -beta(s).
  grad = jax.grad(vp.log_alpha_bar)(0.3)
  np.testing.assert_allclose(grad, -vp.beta(0.3), rtol=1e-5)


def test_vesde_marginals_and_prior():
  ve = sde_lib.VESDE(0.01, 50.0, T)
  x0 = jnp.full((3, 2, 2, 1), 0.5)
  mean, std = ve.marginal_prob(x0, jnp.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(mean, x0)
  np.testing.assert_allclose(std[:, 0, 0, 0], [0.01, math.sqrt(0.01 * 50), 50.0], rtol=1e-5)
  # Diffusion² = d sigma² / ds.
  _, g = ve.sde(x0, 0.4)
  dsig2 = jax.grad(lambda s: ve.sigma(s) ** 2)(0.4)
  np.testing.assert_allclose(g ** 2, dsig2, rtol=1e-4)
  z = ve.prior_sampling(key(0), (4000, 2, 2, 1))
  np.testing.assert_allclose(float(z.std()), 50.0, rtol=0.03)
  np.testing.assert_allclose(ve.prior_logp(jnp.zeros((1, 2, 2, 1))),
                             -2 * math.log(2 * math.pi * 2500), rtol=1e-6)


@pytest.mark.parametrize('prediction', sch.PREDICTIONS)
def test_score_from_model_and_reverse_drift(linear, prediction):
  # The exact Gaussian score is -(x - a mu) / V; the model's -eps / sigma must equal it.
  vp = sde_lib.VPSDE.from_schedule(linear)
  model = exact_denoiser(continuous_alpha_sigma(vp), prediction)
  score_fn = sde_lib.score_fn_from_model(model, vp, prediction)
  x = jax.random.normal(key(0), (5, 4, 4, 1))
  s = 0.37
  a, sig = vp.alpha_sigma(s)
  expected = -(x - a * MU) / (a * a * SD ** 2 + sig * sig)
  np.testing.assert_allclose(score_fn(x, s), expected, rtol=2e-4, atol=1e-5)
  drift, diffusion = vp.sde(x, s)
  ode_drift, ode_diff = vp.reverse(score_fn, probability_flow=True).sde(x, s)
  np.testing.assert_allclose(ode_drift, drift - 0.5 * diffusion ** 2 * expected,
                             rtol=1e-4, atol=1e-5)
  assert float(ode_diff) == 0.0
  sde_drift, sde_diff = vp.reverse(score_fn).sde(x, s)
  np.testing.assert_allclose(sde_drift, drift - diffusion ** 2 * expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sde_diff, diffusion)


# --- Samplers ---------------------------------------------------------------------


def test_timestep_sequence():
  np.testing.assert_array_equal(samplers.timestep_sequence(5), [5, 4, 3, 2, 1, 0])
  np.testing.assert_array_equal(samplers.timestep_sequence(9, stride=4), [9, 5, 1])
  np.testing.assert_array_equal(samplers.timestep_sequence(999, num_steps=4), [999, 666, 333, 0])
  # num_steps is capped at one per index (a low AnoDDPM start).
  np.testing.assert_array_equal(samplers.timestep_sequence(2, num_steps=50), [2, 1, 0])
  with pytest.raises(ValueError, match='not both'):
    samplers.timestep_sequence(9, num_steps=3, stride=2)
  # A config's num_steps describes a full run; a run from t = 200 takes 1/5.
  assert samplers.scaled_num_steps(100, 999, 1000) == 100
  assert samplers.scaled_num_steps(100, 199, 1000) == 20
  assert samplers.scaled_num_steps(100, 2, 1000) == 1


def test_registry_and_static_t_start(linear):
  assert set(samplers.sampler_names()) >= {'ddpm', 'ddim', 'pc', 'ode'}
  with pytest.raises(ValueError, match='Unknown sampler'):
    samplers.get_sampler('euler')
  model = exact_denoiser(discrete_alpha_sigma(linear))
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(TypeError, match='static Python int'):
    jax.jit(lambda t: samplers.ddim_sample(model, linear, key(0), x, t))(3)
  with pytest.raises(ValueError, match='t_start'):
    samplers.ddim_sample(model, linear, key(0), x, T)


# (name, prediction, sde, options, reconstructs). Steps are cut by stride /
# num_steps where the bias stays small (biases measured with 32000 pixels).
# `reconstructs`: from t = 200 the output stays correlated with the image that
# was noised; Langevin correctors mix that away (they target p_s itself).
SAMPLER_CASES = [
    ('ddpm', 'eps', 'vp', dict(), True),  # Variance -2.1% (small posterior variance).
    ('ddpm', 'x0', 'vp', dict(stride=4, variance='large'), True),
    ('ddim', 'v', 'vp', dict(stride=2), True),  # -1.5% (DDIM is Euler in (x/a, s/a)).
    ('ddim', 'x0', 'vp', dict(eta=0.5, num_steps=500), True),  # -2%.
    ('pc', 'eps', 'vp', dict(num_steps=200), False),  # +3% (Langevin at snr 0.16).
    ('pc', 'v', 'vp', dict(num_steps=100, corrector='none', predictor='euler_maruyama'), True),
    ('ode', 'eps', 'vp', dict(num_steps=100), True),
    ('pc', 'eps', 've', dict(num_steps=200, corrector='ald'), True),
    ('ode', 'x0', 've', dict(num_steps=25, method='rk4'), True),
]


@pytest.mark.parametrize('name,prediction,sde_kind,options,reconstructs', SAMPLER_CASES,
                         ids=[f'{c[0]}-{c[1]}-{c[2]}-{i}' for i, c in enumerate(SAMPLER_CASES)])
def test_sampler_recovers_gaussian_data(linear, name, prediction, sde_kind, options,
                                        reconstructs):
  """From pure noise (t_start = T-1) and from q(x_199 | x0) (AnoDDPM's t = 200)."""
  options = dict(options)
  if sde_kind == 've':
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, num_timesteps=T)
    options['sde'] = sde
    model = exact_denoiser(continuous_alpha_sigma(sde), prediction)
    x_noise = sde.prior_sampling(key(1), (B, 4, 4, 1))
  else:
    vp = sde_lib.VPSDE.from_schedule(linear)
    model = exact_denoiser(continuous_alpha_sigma(vp) if name in ('pc', 'ode')
                           else discrete_alpha_sigma(linear), prediction)
    x_noise = jax.random.normal(key(1), (B, 4, 4, 1))
  sampler = samplers.get_sampler(name)
  run = jax.jit(lambda rng, x, t_start: sampler(model, linear, rng, x, t_start,
                                                prediction=prediction, **options),
                static_argnums=2)
  assert_gaussian(run(key(0), x_noise, None), f'{name} from noise')

  # Start from a real sample noised by 200 steps (index 199).
  x0 = MU + SD * jax.random.normal(key(2), (B, 4, 4, 1))
  t_start = sch.noise_level_to_index(200, T)
  noise = jax.random.normal(key(3), x0.shape)
  if sde_kind == 've':
    x_t = x0 + sde.sigma(sde.index_to_time(t_start)) * noise
  else:
    x_t = sch.q_sample(linear, x0, jnp.full((B,), t_start), noise)
  out = run(key(4), x_t, t_start)
  assert_gaussian(out, f'{name} from t=200')
  # A reconstruction, not a fresh sample: correlated with its own x0. An exact
  # ancestral sampler gives Cov(out, x0) / sd² = a² sd² / V; a deterministic
  # one more; a fresh sample 0.
  corr = float(jnp.mean((out - MU) * (x0 - MU) / SD ** 2))
  a2 = float(linear.alphas_cumprod[t_start]) if sde_kind == 'vp' else 1.0
  s2 = 1.0 - a2 if sde_kind == 'vp' else float(sde.sigma(sde.index_to_time(t_start))) ** 2
  expected = float(jnp.mean(a2 * SD ** 2 / (a2 * SD ** 2 + s2)))
  if reconstructs:
    assert corr > 0.8 * expected, f'{name}: reconstruction correlation {corr:.3f} < {expected:.3f}'


def test_gaussian_check_detects_a_wrong_denoiser(linear):
  # The tolerance is tight enough: a denoiser for sd × 1.1 (variance +21%) fails.
  model = exact_denoiser(discrete_alpha_sigma(linear), 'eps', sd_scale=1.1)
  x = jax.random.normal(key(1), (B, 4, 4, 1))
  out = jax.jit(lambda x: samplers.ddim_sample(model, linear, key(0), x,
                                               stride=2))(x)
  with pytest.raises(AssertionError, match='variance'):
    assert_gaussian(out, 'wrong denoiser')


def test_noise_and_denoise_small_noise_level_reconstructs(linear):
  model = exact_denoiser(discrete_alpha_sigma(linear), 'eps')
  x0 = MU + SD * jax.random.normal(key(2), (64, 4, 4, 1))
  rec = jax.jit(lambda x0: samplers.noise_and_denoise(model, linear, key(0), x0, noise_level=5,
                                                      sampler='ddpm'))(x0)
  assert float(jnp.sqrt(jnp.mean((rec - x0) ** 2))) < 0.05


# --- Simplex noise -----------------------------------------------------------------


def _lag_corr(n, lag):
  a, b = n[:, :, :-lag], n[:, :, lag:]
  return float(jnp.mean(a * b) / jnp.sqrt(jnp.mean(a * a) * jnp.mean(b * b)))


def test_simplex_noise_is_normalised_and_spatially_correlated():
  draw = jax.jit(simplex.simplex_noise, static_argnums=1)
  n = draw(key(0), (16, 32, 32, 2))
  assert n.shape == (16, 32, 32, 2) and n.dtype == jnp.float32
  np.testing.assert_allclose(n.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(n.var(axis=(1, 2)), 1.0, rtol=1e-4)
  gauss = jax.random.normal(key(0), n.shape)
  assert _lag_corr(n, 1) > 0.3 and _lag_corr(n, 2) > 0.1  # Blobs, not pixels.
  assert abs(_lag_corr(gauss, 1)) < 0.02
  assert abs(_lag_corr(n, 16)) < 0.05  # Decorrelated beyond the coarsest period.
  # Independent across examples, channels and draws.
  other = draw(key(1), n.shape)
  assert abs(float(jnp.mean(n * other))) < 0.03
  assert abs(float(jnp.mean(n[..., 0] * n[..., 1]))) < 0.03
  assert abs(float(jnp.mean(n[:8] * n[8:]))) < 0.05
