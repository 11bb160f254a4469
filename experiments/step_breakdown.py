r"""Where a training step's time goes: the probes behind BENCHMARKS.md's gap table.

  python -m experiments.step_breakdown --single_thread --repeats=7   # all probes
  python -m experiments.step_breakdown --probes=unet,convs --batch_size=32

Probes (each timed with `experiments.benchmark.time_calls`: one warm-up call,
then interleaved calls, medians):

  unet       the DDPM UNet (configs/ddpm.py:<config>): jit(loss) vs
             jit(grad(loss)) w.r.t. the parameters, the input, and both.
  convs      a 3x3 conv at each UNet level's shape: forward, forward + weight
             gradient, forward + input gradient; and PyTorch's Conv2d forward
             and forward + backward when torch is installed.
  groupnorm  the VAE's and GAN's train steps with flax.linen.GroupNorm and with
             genjax.nn.norm.GroupNorm, compiled in one process (A/B).

XLA options are compared by running the benchmark itself under each, e.g.
`XLA_FLAGS=--xla_cpu_use_onednn=true python -m experiments.benchmark
--method=ddpm --skip_monai --single_thread`.
"""

import json
import statistics
import time

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp

from experiments import benchmark
from genjax import parallel
from genjax.methods import ddpm
from genjax.nn import gan as gan_nn
from genjax.nn import norm
from genjax.nn import vae as vae_nn

_PROBES = flags.DEFINE_list("probes", ["unet", "convs", "groupnorm"],
                            "Which probes to run.")
# --config, --batch_size (default 16 here), --repeats and --single_thread are
# experiments.benchmark's flags (imported above), with the same meaning.


def _ms(timing):
  return {k: round(v["median_s"] * 1000, 2) for k, v in timing.items()}


def unet_probe(variant, batch, repeats):
  config = benchmark.build_config("ddpm", variant, batch_size=batch)
  model = ddpm.make_model(config)
  size = config.data.image_size
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 1))
  t = jnp.arange(batch) % config.diffusion.num_timesteps
  params = model.init(jax.random.key(1), x, t)["params"]
  loss = lambda p, x: jnp.mean(jnp.square(model.apply({"params": p}, x, t)))
  fns = {"forward": jax.jit(loss),
         "grad_params": jax.jit(jax.grad(loss)),
         "grad_input": jax.jit(jax.grad(loss, argnums=1)),
         "grad_both": jax.jit(jax.grad(loss, argnums=(0, 1)))}
  calls = {k: (lambda f=f: jax.block_until_ready(f(params, x)))
           for k, f in fns.items()}
  return _ms(benchmark.time_calls(calls, repeats))


def _torch_conv(c_in, c_out, size, batch, repeats):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
  x = torch.randn(batch, c_in, size, size, requires_grad=True)

  def forward():
    with torch.no_grad():
      torch.sum(conv(x) ** 2)

  def both():
    conv.zero_grad()
    x.grad = None
    torch.sum(conv(x) ** 2).backward()
  out = {}
  for name, fn in (("torch_forward", forward), ("torch_fwd_bwd", both)):
    fn()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    out[name] = round(statistics.median(times) * 1000, 2)
  return out


def conv_probe(variant, batch, repeats):
  config = benchmark.build_config("ddpm", variant, batch_size=batch)
  m, size = config.model, config.data.image_size
  out = {}
  for level, mult in enumerate(m.channel_mult):
    c, s = int(m.base_channels * mult), size // 2 ** level
    conv = flax.linen.Conv(c, (3, 3), padding=1)
    x = jax.random.normal(jax.random.key(0), (batch, s, s, c))
    p = conv.init(jax.random.key(1), x)
    f = lambda p, x, conv=conv: jnp.sum(jnp.square(conv.apply(p, x)))
    fns = {"forward": jax.jit(f), "fwd_dW": jax.jit(jax.grad(f)),
           "fwd_dx": jax.jit(jax.grad(f, argnums=1))}
    calls = {k: (lambda g=g, p=p, x=x: jax.block_until_ready(g(p, x)))
             for k, g in fns.items()}
    row = _ms(benchmark.time_calls(calls, repeats))
    row.update(_torch_conv(c, c, s, batch, repeats) or {})
    out[f"level{level}_{s}x{s}x{c}"] = row
  return out


def groupnorm_probe(variant, batch, repeats):
  mesh = parallel.make_mesh()
  out = {}
  for name, module in (("vae", vae_nn), ("gan", gan_nn)):
    config = benchmark.build_config(name, variant, batch_size=batch)
    steps = {}
    try:
      for label, cls in (("flax", flax.linen.GroupNorm),
                         ("genjax", norm.GroupNorm)):
        module.GroupNorm = cls  # Looked up when the step is traced.
        steps[label] = benchmark.TrainStep(config, mesh)
    finally:
      module.GroupNorm = norm.GroupNorm
    timing = benchmark.time_calls(steps, repeats)
    out[name] = _ms(timing)
    out[name]["speedup"] = round(timing["flax"]["median_s"]
                                 / timing["genjax"]["median_s"], 3)
  return out


PROBES = {"unet": unet_probe, "convs": conv_probe,
          "groupnorm": groupnorm_probe}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = [p for p in _PROBES.value if p not in PROBES]
  if unknown:
    raise app.UsageError(f"Unknown probes {unknown}: use {', '.join(PROBES)}.")
  if flags.FLAGS.single_thread:
    benchmark.set_single_thread()
  batch = flags.FLAGS.batch_size or 16
  for name in _PROBES.value:
    result = PROBES[name](flags.FLAGS.config, batch, flags.FLAGS.repeats)
    print(name, "(milliseconds, medians):", json.dumps(result, indent=1),
          flush=True)


if __name__ == "__main__":
  app.run(main)
