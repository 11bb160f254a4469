r"""Throughput, compile time, memory and hardware efficiency of genjax, and the
same UNet in MONAI/PyTorch as the peer, measured in one run on one device.

  python -m experiments.benchmark                         # DDPM :cpu, 64 px, batch 16
  python -m experiments.benchmark --method=all --batch_size=32 --out=bench_out
  python -m experiments.benchmark --workdir=runs/ddpm_cpu # + AUPRC of both detectors
  python -m experiments.benchmark --config=smoke --image_size=32 --repeats=1 --skip_monai

Protocol: every timed function is called once to warm up (that call includes
compilation where there is one), then `--repeats` times, each call timed on
its own and blocked on (`jax.block_until_ready`; PyTorch on CPU is
synchronous); the reported time is the median. genjax and MONAI calls are
interleaved (g, m, g, m, ...), so that a machine shared with other work slows
both alike and their ratio stays fair. Compile time is timed separately
ahead of time (`jit(f).lower(...).compile()`).

What is timed:
  train     the training loop's own jitted step (`genjax.train._make_train_step`:
            augmentation + `method.train_step`, state donated) on random
            images; FLOPs per step from XLA's cost analysis, divided by the
            step time, as a fraction of what a large float32 matmul reaches
            on the same device in the same run.
  sample    `method.sample` (DDPM: ancestral and DDIM with `--sample_steps`
            model evaluations each; VAE/GAN: one decoder pass).
  forward   one UNet forward at the training batch, no gradient (the cost of
            one sampling step), genjax vs MONAI.
  detect    `method.reconstruct` at t = anomaly.noise_level: ancestral over
            every step vs DDIM with `--ddim_stride`; with `--workdir` (a
            trained DDPM) also `genjax.anomaly.detect` both ways (AUPRC).
  pipeline  `genjax.data.pipeline.train_iterator` images/s after warm-up.

Writes OUT/benchmark.json and OUT/BENCHMARK_TABLE.md and prints the table.
Targets are reported as pass/fail, never asserted.
"""

import datetime
import importlib
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from genjax import anomaly
from genjax import checkpoints
from genjax import files
from genjax import methods
from genjax import parallel
from genjax import train as train_lib
from genjax.data import pipeline
from genjax.diffusion import schedules
from genjax.nn import unet as unet_lib

_METHOD = flags.DEFINE_enum("method", "ddpm", ["ddpm", "vae", "gan", "all"],
                            "Which method(s) to benchmark.")
_CONFIG = flags.DEFINE_string(
    "config", "cpu", "Config variant of configs/<method>.py: 'cpu', 'smoke' "
    "or '' (research scale).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Image size; default: the config's.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None,
                                   "Training batch; default: the config's.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
_OUT = flags.DEFINE_string("out", "benchmark_out",
                           "Folder for benchmark.json and the table.")
_SKIP_MONAI = flags.DEFINE_bool("skip_monai", False,
                                "Do not time the MONAI/PyTorch peer.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A trained DDPM workdir: also run genjax.anomaly.detect "
    "with both samplers on the test split and report both AUPRCs.")
_DETECT_SPLITS = flags.DEFINE_list(
    "detect_splits", None, "With --workdir: the test and validation splits "
    "of the AUPRC comparison, in TFDS syntax (e.g. 'test[:10%],"
    "validation[:10%]'); default: the run's data.eval_split and "
    "data.val_split. Ancestral detection costs t model evaluations a slice.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "config.data.data_dir (where the phantom is "
                                "built); default: the config's.")
_SAMPLE_STEPS = flags.DEFINE_integer(
    "sample_steps", 50, "Model evaluations of each timed DDPM sampling run "
    "(ancestral and DDIM); images/s are at this many evaluations.")
_DDIM_ETA = flags.DEFINE_float(
    "ddim_eta", 0.0, "Noise scale of the DDIM detector: 0 deterministic, 1 "
    "the respaced ancestral posterior's variance.")
_DDIM_STRIDE = flags.DEFINE_integer(
    "ddim_stride", 10, "Timestep stride of the DDIM detector (ancestral "
    "uses every step from t to 0).")
_DETECT_BATCH = flags.DEFINE_integer(
    "detect_batch", None, "Slices per timed reconstruction; default: the "
    "config's eval.batch_size.")
_PIPELINE_BATCHES = flags.DEFINE_integer(
    "pipeline_batches", 20, "Batches per timed input-pipeline run.")
_SINGLE_THREAD = flags.DEFINE_bool(
    "single_thread", False, "Run XLA and PyTorch on one thread each: on a "
    "machine shared with other work, multi-threaded PyTorch (OpenMP) slows "
    "down far more than XLA, so this gives the fairer ratio there.")
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 2048, "Side of the float32 matmul that measures the "
    "device's reachable FLOP/s.")


# --- Timing -----------------------------------------------------------------


def _block(x):
  return jax.block_until_ready(x)


def time_calls(fns, repeats, warmup=1):
  """Interleaved timing of several zero-argument callables.

  Args:
    fns: {name: fn}; each call must finish its work before returning (block
      on JAX results inside fn).
    repeats: timed calls of each fn.
    warmup: untimed calls of each fn first.

  Returns:
    {name: {'median_s', 'min_s', 'times_s', 'first_s'}}, first_s being the
    first warm-up call (compilation included where fn compiles lazily).
  """
  first = {}
  for i in range(warmup):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      if i == 0:
        first[name] = time.perf_counter() - t0
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: {"median_s": statistics.median(ts), "min_s": min(ts),
                 "times_s": ts, "first_s": first.get(name)}
          for name, ts in times.items()}


def aot_compile(jitted, *args):
  """(compiled, seconds to lower and compile) for a jitted function."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def flops_of(compiled):
  """FLOPs XLA's cost analysis counts for a compiled computation (or None).

  Loops (lax.scan) are counted once, not per iteration, so this is only
  meaningful for straight-line computations such as one training step.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per device.
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def count_flops(fn, *args):
  """FLOPs of jax.jit(fn)(*args) by XLA's cost analysis."""
  return flops_of(jax.jit(fn).lower(*args).compile())


def matmul_peak(n, repeats):
  """FLOP/s of an n×n float32 matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  compiled, _ = aot_compile(jax.jit(jnp.matmul), a, b)
  flops = flops_of(compiled)
  t = time_calls({"mm": lambda: _block(compiled(a, b))}, repeats)["mm"]
  return {"n": n, "flops": flops, "median_s": t["median_s"],
          "flops_per_s": flops / t["median_s"] if flops else None}


def peak_memory():
  """Peak bytes in use on the default device, or None if not reported."""
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return stats.get("peak_bytes_in_use")


# --- Configs ------------------------------------------------------------------


def build_config(method, variant, image_size=None, batch_size=None,
                 data_dir=None):
  """configs/<method>.py:<variant> with the benchmark's overrides."""
  config = importlib.import_module(f"configs.{method}").get_config(variant)
  if image_size is not None:
    config.data.image_size = image_size
  if batch_size is not None:
    config.train.batch_size = batch_size
  if data_dir is not None:
    config.data.data_dir = data_dir
  methods.validate(config)
  return config


def random_batch(config, rng, batch_size=None):
  """A training batch of random images (timing does not depend on values)."""
  batch = train_lib.example_batch(config)
  b = batch_size or config.train.batch_size
  s = config.data.image_size
  images = jax.random.uniform(rng, (b, s, s, 1), minval=-1.0, maxval=1.0)
  return dict({k: v[:b] for k, v in batch.items()}, image=images,
              brain=jnp.ones_like(images))


def _with(config, section, **fields):
  config = config.copy_and_resolve_references()
  for k, v in fields.items():
    config[section][k] = v
  return config


# --- genjax measurements ------------------------------------------------------


def init_state(method, config, mesh):
  rng = jax.random.key(config.seed, impl="rbg")  # As the loop does.
  init = jax.jit(method.init, out_shardings=parallel.replicated(mesh))
  return init(rng, train_lib.example_batch(config))


class TrainStep:
  """The loop's jitted train step, AOT-compiled, carrying its donated state."""

  def __init__(self, config, mesh):
    self.method = methods.get(config)
    self.state = init_state(self.method, config, mesh)
    jitted = train_lib._make_train_step(self.method, config, mesh)  # pylint: disable=protected-access
    self.batch = parallel.to_global(
        jax.device_get(random_batch(config, jax.random.key(1))), mesh)
    self.rng = jax.random.key(2)
    self.compiled, self.compile_s = aot_compile(jitted, self.state, self.batch,
                                                self.rng)
    self.flops = flops_of(self.compiled)
    self.i = 0

  def __call__(self):
    self.i += 1
    self.state, metrics = self.compiled(self.state, self.batch,
                                        jax.random.fold_in(self.rng, self.i))
    _block((self.state, metrics))


def trained_param_count(state):
  """Parameters the optimiser(s) train: every `*params` field but the EMAs."""
  fields = [f for f in vars(state) if f.endswith("params") and "ema" not in f]
  return unet_lib.param_count([getattr(state, f) for f in fields])


def unet_forward(config, mesh, batch_size):
  """(call, compile_s, flops, params) of one jitted DDPM UNet forward."""
  from genjax.methods import ddpm  # pylint: disable=g-import-not-at-top
  model = ddpm.make_model(config)
  s = config.data.image_size
  x = jax.random.normal(jax.random.key(3), (batch_size, s, s, 1))
  t = jnp.full((batch_size,), 500, jnp.int32)
  params = jax.jit(lambda: model.init({"params": jax.random.key(0, impl="rbg")},
                                      x, t)["params"])()
  fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  compiled, compile_s = aot_compile(fwd, params, x, t)
  del mesh
  return (lambda: _block(compiled(params, x, t))), compile_s, flops_of(
      compiled), params


def _sampling_fn(config, state, n):
  method = methods.get(config)
  compiled, compile_s = aot_compile(
      jax.jit(method.sample, static_argnums=2), state, jax.random.key(4), n)
  return (lambda: _block(compiled(state, jax.random.key(4)))), compile_s


def _reconstruct_fn(config, state, images):
  method = methods.get(config)
  compiled, compile_s = aot_compile(jax.jit(method.reconstruct), state, images,
                                    jax.random.key(5))
  return (lambda: _block(compiled(state, images, jax.random.key(5)))), compile_s


def detect_configs(config, ddim_stride, ddim_eta=0.0):
  """{'ancestral': config, 'ddim': config} for reconstruction at the config's t.

  Ancestral evaluates the model at every index from t-1 to 0; DDIM at every
  `ddim_stride`-th (num_steps is a full-run count that samplers scale by t/T),
  with noise scale `ddim_eta` (0 deterministic, 1 the respaced ancestral
  posterior's variance).
  """
  t_total = config.diffusion.num_timesteps
  return {
      "ancestral": _with(config, "anomaly", sampler="ddpm", num_steps=None),
      "ddim": _with(config, "anomaly", sampler="ddim", eta=ddim_eta,
                    num_steps=max(1, t_total // ddim_stride)),
  }


def model_evaluations(config, section):
  """Model evaluations of a DDPM sampling / reconstruction run."""
  from genjax.diffusion import samplers  # pylint: disable=g-import-not-at-top
  cfg = config[section]
  n = config.diffusion.num_timesteps
  t_start = (n - 1 if section == "sample"
             else schedules.noise_level_to_index(cfg.noise_level, n))
  steps = cfg.num_steps
  if steps is not None:
    steps = samplers.scaled_num_steps(steps, t_start, n)
  return len(samplers.timestep_sequence(t_start, steps))


def pipeline_throughput(config, batch_size, n_batches, repeats):
  """Images/s of train_iterator after a warm-up (cache filled)."""
  t0 = time.perf_counter()
  batches = pipeline.train_iterator(config.data, batch_size, seed=0)
  for _ in range(3):
    next(batches)
  warm_s = time.perf_counter() - t0

  def run():
    for _ in range(n_batches):
      next(batches)
  t = time_calls({"pipeline": run}, repeats, warmup=0)["pipeline"]
  return {"images_per_s": n_batches * batch_size / t["median_s"],
          "median_s": t["median_s"], "batches_per_run": n_batches,
          "first_batches_s": warm_s}


# --- The MONAI peer -----------------------------------------------------------


def torch_available():
  try:
    import monai  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return False, f"{e.name} is not installed (pip install -e '.[bench]')"
  return True, None


def monai_kwargs(config):
  """DiffusionModelUNet keyword arguments equal to genjax's DDPM UNet."""
  m = config.model
  channels = tuple(int(round(m.base_channels * c)) for c in m.channel_mult)
  levels = len(channels)
  if m.head_channels:
    heads = m.head_channels
  else:  # num_heads per level -> channels per head per level.
    heads = tuple(c // m.num_heads for c in channels)
  return dict(spatial_dims=2, in_channels=1, out_channels=1,
              channels=channels,
              attention_levels=tuple(l in m.attention_resolutions
                                     for l in range(levels)),
              num_res_blocks=m.num_res_blocks, num_head_channels=heads,
              norm_num_groups=m.num_groups)


def torch_device():
  """The PyTorch device matching JAX's: CUDA when JAX runs on a GPU and the
  installed torch build has CUDA, else the CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "gpu" and torch.cuda.is_available():
    return torch.device("cuda")
  return torch.device("cpu")


def _torch_sync(device):
  import torch  # pylint: disable=g-import-not-at-top
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def monai_unet(config):
  from monai.networks.nets import DiffusionModelUNet  # pylint: disable=g-import-not-at-top
  return DiffusionModelUNet(**monai_kwargs(config)).to(torch_device())


def torch_param_count(model):
  return int(sum(p.numel() for p in model.parameters()))


class MonaiTrainStep:
  """Adam step on the eps-prediction MSE, with the same gradient clipping and
  EMA as genjax's DDPM step, at the same batch, size and schedule."""

  def __init__(self, config, model):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.device = next(model.parameters()).device
    self.model = model.train()
    self.ema = [p.detach().clone() for p in model.parameters()]
    self.opt = torch.optim.Adam(model.parameters(),
                                lr=config.optim.learning_rate,
                                betas=(config.optim.b1, config.optim.b2))
    sched = schedules.make_schedule(config.diffusion.schedule,
                                    config.diffusion.num_timesteps)
    self.abar = torch.from_numpy(
        np.array(schedules.alpha_bar(sched, jnp.arange(
            config.diffusion.num_timesteps)), np.float32)).to(self.device)
    b, s = config.train.batch_size, config.data.image_size
    gen = torch.Generator().manual_seed(0)
    self.x0 = (torch.rand((b, 1, s, s), generator=gen) * 2 - 1).to(self.device)
    self.num_t = config.diffusion.num_timesteps
    self.clip = config.optim.grad_clip
    self.decay = config.diffusion.ema_decay

  def __call__(self):
    torch = self.torch
    x0 = self.x0
    t = torch.randint(0, self.num_t, (x0.shape[0],), device=self.device)
    eps = torch.randn_like(x0)
    a = self.abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    self.opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(self.model(x_t, t), eps)
    loss.backward()
    if self.clip:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, list(self.model.parameters()),  # pylint: disable=protected-access
                           1.0 - self.decay)
    return loss.item()  # Waits for the device, like block_until_ready.


def monai_forward(config, model, batch_size):
  import torch  # pylint: disable=g-import-not-at-top
  s = config.data.image_size
  device = next(model.parameters()).device
  x = torch.randn((batch_size, 1, s, s), device=device)
  t = torch.full((batch_size,), 500, dtype=torch.long, device=device)
  model = model.eval()

  def call():
    with torch.inference_mode():
      model(x, t)
    _torch_sync(device)
  return call


# --- The benchmark ------------------------------------------------------------


def _rate(n, timing):
  return n / timing["median_s"]


def bench_method(name, variant, *, image_size=None, batch_size=None,
                 data_dir=None, repeats=5, skip_monai=False, sample_steps=50,
                 ddim_stride=10, ddim_eta=0.0, pipeline_batches=20,
                 workdir=None,
                 detect_splits=None,
                 peak_flops=None, mesh=None, detect_batch=None, out_dir=None):
  """All measurements of one method; returns a JSON-able dict."""
  config = build_config(name, variant, image_size, batch_size, data_dir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  b, size = config.train.batch_size, config.data.image_size
  out = {"config": f"configs/{name}.py:{variant}", "image_size": size,
         "batch_size": b}
  logging.info("Benchmarking %s at %d px, batch %d", name, size, b)

  step = TrainStep(config, mesh)
  out["params"] = trained_param_count(step.state)
  fns = {"genjax_train": step}

  monai_note = None
  peer = None
  if name == "ddpm" and not skip_monai:
    ok, monai_note = torch_available()
    if ok:
      peer = monai_unet(config)
      fns["monai_train"] = MonaiTrainStep(config, peer)
  elif name == "ddpm":
    monai_note = "skipped (--skip_monai)"
  else:
    monai_note = "MONAI has no equivalent network; not compared"
  logging.info("%s: timing the train step (%s)", name, ", ".join(fns))
  timing = time_calls(fns, repeats)
  tr = timing["genjax_train"]
  out["train"] = {
      "images_per_s": _rate(b, tr), "median_s": tr["median_s"],
      "times_s": tr["times_s"], "compile_s": step.compile_s,
      "first_call_s": tr["first_s"], "flops_per_step": step.flops,
      "flops_per_s": step.flops / tr["median_s"] if step.flops else None,
  }
  if step.flops and peak_flops:
    out["train"]["fraction_of_matmul_peak"] = (
        out["train"]["flops_per_s"] / peak_flops)
  # What each checkpoint adds to orbax's save: the sha256 of every array of
  # the TrainState (device-to-host copy included), and again on restore.
  sums = time_calls({"checksums": lambda: checkpoints.fingerprint(step.state)},
                    repeats)["checksums"]
  out["checkpoint"] = {
      "state_bytes": sum(x.nbytes for x in jax.tree.leaves(step.state)
                         if hasattr(x, "nbytes")),
      "checksum_median_s": sums["median_s"],
      "ckpt_every": config.train.ckpt_every,
      "checksum_s_per_step": sums["median_s"] / config.train.ckpt_every,
      "checksum_fraction_of_training": (
          sums["median_s"] / config.train.ckpt_every / tr["median_s"])}
  out["monai_note"] = monai_note
  if peer is not None:
    mt = timing["monai_train"]
    out["monai"] = {
        "kwargs": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in monai_kwargs(config).items()},
        "params": torch_param_count(peer),
        "train_images_per_s": _rate(b, mt), "train_median_s": mt["median_s"],
        "train_times_s": mt["times_s"], "first_call_s": mt["first_s"],
    }
  del step, fns

  if name == "ddpm":
    logging.info("ddpm: timing one UNet forward, sampling and detection")
    # One UNet forward (= one sampling step), genjax vs MONAI.
    fwd, fwd_compile, fwd_flops, fwd_params = unet_forward(config, mesh, b)
    out["params"] = unet_lib.param_count(fwd_params)
    fns = {"genjax_forward": fwd}
    if peer is not None:
      fns["monai_forward"] = monai_forward(config, peer, b)
    timing = time_calls(fns, repeats)
    out["forward"] = {"images_per_s": _rate(b, timing["genjax_forward"]),
                      "median_s": timing["genjax_forward"]["median_s"],
                      "compile_s": fwd_compile, "flops": fwd_flops}
    if peer is not None:
      out["monai"]["forward_images_per_s"] = _rate(b, timing["monai_forward"])
      out["monai"]["forward_median_s"] = timing["monai_forward"]["median_s"]

    state = init_state(methods.get(config), config, mesh)
    n = config.sample.num_samples
    out["sample"] = {}
    for sampler in ("ddpm", "ddim"):
      cfg = _with(config, "sample", sampler=sampler, num_steps=sample_steps,
                  eta=0.0)
      fn, compile_s = _sampling_fn(cfg, state, n)
      t = time_calls({sampler: fn}, repeats)[sampler]
      out["sample"][sampler] = {
          "images_per_s": _rate(n, t), "median_s": t["median_s"],
          "compile_s": compile_s, "batch": n,
          "model_evaluations": model_evaluations(cfg, "sample")}

    db = detect_batch or config.eval.batch_size
    images = random_batch(config, jax.random.key(6), db)["image"]
    out["detect"] = {"noise_level": config.anomaly.noise_level, "batch": db}
    for kind, cfg in detect_configs(config, ddim_stride, ddim_eta).items():
      fn, compile_s = _reconstruct_fn(cfg, state, images)
      t = time_calls({kind: fn}, repeats)[kind]
      out["detect"][kind] = {
          "slices_per_s": _rate(db, t), "median_s": t["median_s"],
          "compile_s": compile_s,
          "model_evaluations": model_evaluations(cfg, "anomaly")}
    out["detect"]["ddim_stride"] = ddim_stride
    out["detect"]["ddim_eta"] = ddim_eta
    out["detect"]["speedup"] = (out["detect"]["ddim"]["slices_per_s"]
                                / out["detect"]["ancestral"]["slices_per_s"])
    out["detect"]["auprc"] = detect_auprc(config, workdir, ddim_stride,
                                          out_dir, splits=detect_splits,
                                          ddim_eta=ddim_eta)
  else:
    state = init_state(methods.get(config), config, mesh)
    n = config.sample.num_samples if "sample" in config else b
    fn, compile_s = _sampling_fn(config, state, n)
    t = time_calls({"sample": fn}, repeats)["sample"]
    out["sample"] = {"decoder": {"images_per_s": _rate(n, t),
                                 "median_s": t["median_s"],
                                 "compile_s": compile_s, "batch": n}}

  logging.info("%s: timing the input pipeline", name)
  out["pipeline"] = pipeline_throughput(config, b, pipeline_batches, repeats)
  out["peak_memory_bytes"] = peak_memory()
  out["targets"] = targets(out)
  return out


def workdir_config(workdir, data_dir=None):
  """The config of the DDPM run in `workdir` (its saved config.json)."""
  path = files.join(workdir, "config.json")
  if not files.exists(path):
    raise FileNotFoundError(f"--workdir={workdir} has no config.json: give "
                            "the workdir of a trained DDPM run.")
  saved = train_lib.flatten_config(files.read_json(path))
  if saved.get("method") != "ddpm":
    raise ValueError(f"--workdir={workdir} holds a {saved.get('method')!r} "
                     "run; the detector comparison needs a DDPM.")
  config = build_config("ddpm", saved.get("variant", ""), data_dir=data_dir)
  for key, value in saved.items():
    section, _, field = key.partition(".")
    if section in ("model", "diffusion", "data", "anomaly") and field and (
        key != "data.data_dir" or data_dir is None):
      config[section][field] = tuple(value) if isinstance(value,
                                                          list) else value
  return config


def detect_auprc(config, workdir, ddim_stride, out_dir=None, splits=None,
                 ddim_eta=0.0):
  """Pixel and slice AUPRC of genjax.anomaly.detect, ancestral vs DDIM, at
  the benchmark config's noise level, on the trained run in `workdir`.

  `splits`: optional (test split, validation split) in TFDS syntax, e.g. a
  slice of each where ancestral detection of whole splits is too slow.
  """
  if not workdir:
    return {"note": "not measured: needs a trained workdir (--workdir)"}
  cfg = workdir_config(workdir, config.data.data_dir)
  cfg.anomaly.noise_level = config.anomaly.noise_level
  if splits:
    if len(splits) != 2:
      raise ValueError(f"--detect_splits={','.join(splits)}: give two "
                       "splits, the test one and the validation one.")
    cfg.data.eval_split, cfg.data.val_split = splits
  result = {"eval_split": cfg.data.eval_split, "val_split": cfg.data.val_split}
  for kind, c in detect_configs(cfg, ddim_stride, ddim_eta).items():
    method, state = train_lib.load_state(c, workdir)
    t0 = time.perf_counter()
    m = anomaly.detect(c, method, state,
                       files.join(out_dir or "benchmark_out",
                                  f"detect_{kind}"))
    result[kind] = {"auprc": m.get("auprc"),
                    "slice_auprc": m.get("slice_auprc"),
                    "n_test_slices": m.get("n_test_slices"),
                    "n_test_lesion_slices": m.get("n_test_lesion_slices"),
                    "seconds": time.perf_counter() - t0,
                    "checkpoint_step": int(state.step)}
  # Signed: the target asks that the faster detector lose at most 0.02 AUPRC;
  # a DDIM detector that beats ancestral reconstruction does not miss it.
  result["auprc_ddim_minus_ancestral"] = (result["ddim"]["auprc"]
                                          - result["ancestral"]["auprc"])
  return result


def targets(r):
  """[(name, value, target, passed)] for one method's results."""
  rows = []
  train_rate = r["train"]["images_per_s"]
  if "monai" in r:
    ratio = train_rate / r["monai"]["train_images_per_s"]
    rows.append(("training genjax/MONAI", ratio, "≥ 1.0", ratio >= 1.0))
    ratio = r["forward"]["images_per_s"] / r["monai"]["forward_images_per_s"]
    rows.append(("sampling step genjax/MONAI", ratio, "≥ 1.0", ratio >= 1.0))
  ratio = r["pipeline"]["images_per_s"] / train_rate
  rows.append(("input pipeline / training consumption", ratio, "≥ 10",
               ratio >= 10))
  if "detect" in r:
    d = r["detect"]
    eta = d.get("ddim_eta", 0.0)
    rows.append((f"detection DDIM (stride {d['ddim_stride']}, eta {eta:g}) / "
                 f"ancestral "
                 f"speed at t={d['noise_level']}", d["speedup"], "≥ 10",
                 d["speedup"] >= 10))
    name = "pixel AUPRC, DDIM − ancestral"
    if "auprc_ddim_minus_ancestral" in d["auprc"]:
      diff = d["auprc"]["auprc_ddim_minus_ancestral"]
      rows.append((name, diff, "≥ −0.02", diff >= -0.02))
    else:
      rows.append((name, None, "≥ −0.02", None))
  return [{"name": n, "value": v, "target": t, "passed": p}
          for n, v, t, p in rows]


# --- Reporting ----------------------------------------------------------------


def _f(x, digits=3):
  if x is None:
    return "—"
  if isinstance(x, float):
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
  return str(x)


def _gb(x):
  return "not reported" if x is None else f"{x / 2**30:.2f} GiB"


def markdown(result):
  """The whole benchmark table (markdown) from a result dict."""
  meta = result["meta"]
  lines = [
      f"Measured {meta['date']} on {meta['device']} ({meta['cpu_count']} CPU "
      f"cores visible), jax {meta['jax']}, jaxlib {meta['jaxlib']}, "
      f"torch {meta['torch'] or 'not installed'}"
      f"{' on ' + meta['torch_device'] if meta.get('torch_device') else ''}, monai "
      f"{meta['monai'] or 'not installed'}. Load average before/after: "
      f"{meta['load_before']} / {meta['load_after']}. XLA_FLAGS="
      f"`{meta['xla_flags'] or ''}`, PyTorch threads "
      f"{meta['torch_threads'] or '—'}.",
      "",
      f"Command: `{meta['command']}`",
      "",
      f"Reachable float32 matmul ({result['matmul']['n']}²): "
      f"{_f(result['matmul']['flops_per_s'] / 1e9)} GFLOP/s.",
      "",
  ]
  for name, r in result["methods"].items():
    lines += [f"### {name} ({r['config']}, {r['image_size']} px, batch "
              f"{r['batch_size']}, {_f(r['params'])} parameters)", "",
              "| measurement | genjax | MONAI | genjax/MONAI |",
              "|---|---|---|---|"]
    tr, mo = r["train"], r.get("monai")
    ratio = lambda a, b: _f(a / b) if a and b else "—"
    lines.append(
        f"| training images/s | {_f(tr['images_per_s'])} | "
        f"{_f(mo['train_images_per_s']) if mo else '—'} | "
        f"{ratio(tr['images_per_s'], mo['train_images_per_s']) if mo else '—'} |")
    lines.append(f"| training step, median s | {_f(tr['median_s'])} | "
                 f"{_f(mo['train_median_s']) if mo else '—'} | |")
    lines.append(f"| train step compile s (AOT) | {_f(tr['compile_s'])} | — | |")
    lines.append(f"| FLOPs per train step (XLA) | "
                 f"{_f(tr['flops_per_step'] / 1e9 if tr['flops_per_step'] else None)} G | | |")
    lines.append(f"| achieved GFLOP/s (fraction of matmul) | "
                 f"{_f(tr['flops_per_s'] / 1e9 if tr['flops_per_s'] else None)} "
                 f"({_f(tr.get('fraction_of_matmul_peak'))}) | | |")
    if "forward" in r:
      fw = r["forward"]
      lines.append(
          f"| sampling step (1 UNet forward) images/s | "
          f"{_f(fw['images_per_s'])} | "
          f"{_f(mo['forward_images_per_s']) if mo else '—'} | "
          f"{ratio(fw['images_per_s'], mo['forward_images_per_s']) if mo else '—'} |")
    if mo:
      lines.append(f"| parameters | {_f(r['params'])} | {_f(mo['params'])} | "
                   f"{ratio(r['params'], mo['params'])} |")
    for sampler, s in r["sample"].items():
      evals = (f", {s['model_evaluations']} evaluations"
               if "model_evaluations" in s else "")
      lines.append(f"| sampling images/s ({sampler}{evals}, batch "
                   f"{s['batch']}) | {_f(s['images_per_s'])} | | |")
    if "detect" in r:
      d = r["detect"]
      for kind in ("ancestral", "ddim"):
        lines.append(
            f"| detection slices/s, t={d['noise_level']}, {kind} "
            f"({d[kind]['model_evaluations']} evaluations, batch "
            f"{d['batch']}) | {_f(d[kind]['slices_per_s'])} | | |")
      au = d["auprc"]
      if "note" in au:
        lines.append(f"| detection AUPRC | {au['note']} | | |")
      else:
        for kind in ("ancestral", "ddim"):
          lines.append(f"| detection AUPRC ({kind}; slice AUPRC) on "
                       f"{au['eval_split']} ({au[kind]['n_test_slices']} "
                       f"slices, {au[kind]['n_test_lesion_slices']} with "
                       "lesions) | "
                       f"{_f(au[kind]['auprc'])} ({_f(au[kind]['slice_auprc'])})"
                       " | | |")
    ck = r.get("checkpoint")
    if ck:
      lines.append(
          f"| checkpoint checksums: sha256 of {_f(ck['state_bytes'] / 1e6)} MB "
          f"of state, median s (every {ck['ckpt_every']} steps: "
          f"{_f(100 * ck['checksum_fraction_of_training'])}% of training "
          f"time) | {_f(ck['checksum_median_s'])} | | |")
    lines.append(f"| input pipeline images/s | "
                 f"{_f(r['pipeline']['images_per_s'])} | | |")
    lines.append(f"| peak device memory | {_gb(r['peak_memory_bytes'])} | | |")
    if r.get("monai_note") and not mo:
      lines.append(f"| MONAI peer | {r['monai_note']} | | |")
    lines += ["", "| target | value | wanted | result |", "|---|---|---|---|"]
    for t in r["targets"]:
      verdict = {True: "pass", False: "FAIL", None: "not measured"}[t["passed"]]
      lines.append(f"| {t['name']} | {_f(t['value'])} | {t['target']} | "
                   f"{verdict} |")
    lines.append("")
  return "\n".join(lines)


def _torch_threads():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return torch.get_num_threads()


def _versions():
  out = {"jax": jax.__version__}
  import jaxlib  # pylint: disable=g-import-not-at-top
  out["jaxlib"] = jaxlib.__version__
  for mod in ("torch", "monai"):
    try:
      out[mod] = importlib.import_module(mod).__version__
    except ImportError:
      out[mod] = None
  out["torch_device"] = str(torch_device()) if out["torch"] else None
  return out


def run(method="ddpm", variant="cpu", *, out_dir=None, command=None,
        repeats=5, matmul_size=2048, **kwargs):
  """Runs the benchmark; returns the result dict (and writes it if out_dir)."""
  names = ["ddpm", "vae", "gan"] if method == "all" else [method]
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M UTC"), "command": command or " ".join(sys.argv),
          "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
          + ("" if jax.default_backend() != "cpu" else
             f", {platform.processor() or platform.machine()}"),
          "cpu_count": os.cpu_count(),
          "torch_threads": _torch_threads(),
          "load_before": [round(x, 2) for x in os.getloadavg()],
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  meta.update(_versions())
  if not kwargs.get("skip_monai") and "ddpm" in names:
    ok, note = torch_available()
    if not ok:
      print(f"Note: {note}; timing genjax only (as with --skip_monai).")
  peak = matmul_peak(matmul_size, repeats)
  result = {"meta": meta, "matmul": peak, "methods": {}}
  for name in names:
    result["methods"][name] = bench_method(
        name, variant, repeats=repeats, peak_flops=peak["flops_per_s"],
        out_dir=out_dir, **kwargs)
  meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
  table = markdown(result)
  result["table_markdown"] = table
  if out_dir:
    # Through genjax.files: out_dir may be a local folder or gs://...
    files.write_json(files.join(out_dir, "benchmark.json"), result,
                     indent=2, default=float)
    files.write_text(files.join(out_dir, "BENCHMARK_TABLE.md"), table + "\n")
  return result


def set_single_thread():
  """One thread for XLA and PyTorch; call before JAX initialises its backend."""
  extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + extra).strip()
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)
  except ImportError:
    pass


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _SINGLE_THREAD.value:
    set_single_thread()
  command = "python -m experiments.benchmark " + " ".join(
      a for a in sys.argv[1:])
  result = run(_METHOD.value, _CONFIG.value, out_dir=_OUT.value,
               command=command.strip(), repeats=_REPEATS.value,
               matmul_size=_MATMUL_SIZE.value,
               image_size=_IMAGE_SIZE.value, batch_size=_BATCH_SIZE.value,
               data_dir=_DATA_DIR.value, skip_monai=_SKIP_MONAI.value,
               sample_steps=_SAMPLE_STEPS.value,
               ddim_stride=_DDIM_STRIDE.value, ddim_eta=_DDIM_ETA.value,
               pipeline_batches=_PIPELINE_BATCHES.value,
               detect_batch=_DETECT_BATCH.value, workdir=_WORKDIR.value,
               detect_splits=_DETECT_SPLITS.value)
  print(result["table_markdown"])
  print(f"Wrote {_OUT.value}/benchmark.json and {_OUT.value}/BENCHMARK_TABLE.md")


if __name__ == "__main__":
  app.run(main)
