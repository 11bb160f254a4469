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
  profile    the benchmark's DDPM train step (Adam included) under
             jax.profiler.trace: the time of every compiled XLA op, read back
             with jax.profiler.ProfileData, grouped by kind (conv forward,
             conv input gradient, conv weight gradient, transposes/copies,
             reductions, matmuls, elementwise fusions) with the largest ops.
             --profile_dir keeps the trace for TensorBoard/XProf.
  detect     the detector's jitted score function (genjax.detect.scores, as
             detection runs it) of every compare_models entry, on one batch
             of random images and random weights (the cost does not depend
             on either), all entries timed interleaved in one process:
             ms per slice beside network calls per slice. Entries and their
             choices (t) with --entries and --entry_override, e.g.
             --entry_override=ddpm:anomaly.noise_level=100.

XLA options are compared by running the benchmark itself under each, e.g.
`XLA_FLAGS=--xla_cpu_use_onednn=true python -m experiments.benchmark
--method=ddpm --skip_monai --single_thread`.
"""

import collections
import glob
import json
import os
import re
import statistics
import tempfile
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
                            "Which probes to run (also: profile).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "profile probe: keep the jax.profiler trace here "
    "(default: a temporary directory, deleted).")
_TOP = flags.DEFINE_integer("top", 12, "profile probe: largest ops listed.")
_ENTRIES = flags.DEFINE_list(
    "entries", None, "detect probe: compare_models entries (default: all).")
_ENTRY_OVERRIDES = flags.DEFINE_multi_string(
    "entry_override", [], "detect probe: ENTRY:FIELD=VALUE, applied to that "
    "entry's config (e.g. the t compare_models chose).")
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


# --- Per-op profile -----------------------------------------------------------

# Op kinds, in the order the profile prints them.
KINDS = ("conv forward", "conv input gradient", "conv weight gradient",
         "transpose/copy", "reduction", "matmul", "elementwise", "other")
# A weight gradient is a convolution whose window is the activation itself; no
# genjax network has kernels wider than this, nor activations narrower.
_MAX_KERNEL = 7


def _computations(hlo):
  """{computation name: its instruction lines} of an HLO module's text."""
  comps, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%(\S+) ", line)
    if head:
      current = comps.setdefault(head.group(1), [])
    elif current is not None and line.strip() not in ("", "}"):
      current.append(line)
  return comps


def _conv_kind(line):
  window = re.search(r"window=\{size=(\d+)x(\d+)", line)
  if window and max(int(window.group(1)), int(window.group(2))) > _MAX_KERNEL:
    return "conv weight gradient"
  if "transpose(" in line:  # Metadata op_name of the backward pass.
    return "conv input gradient"
  return "conv forward"


def op_kinds(hlo):
  """{instruction name: kind (one of KINDS)} for a compiled module's text.

  A fusion's kind is that of the heaviest op it calls (convolution > matmul
  > reduction > transpose/copy > elementwise); custom fusions (XNNPACK/
  YNNPACK) are classified by the convolution or dot they wrap.
  """
  comps = _computations(hlo)
  kinds = {}
  for lines in comps.values():
    for line in lines:
      m = re.match(r"^\s*(?:ROOT )?%(\S+) = \S+ (\S+?)\(", line)
      if not m:
        continue
      name, opcode = m.groups()
      body = [line]
      called = re.search(r"calls=%([\w.\-]+)", line)
      if called:
        body = comps.get(called.group(1), [])
      text = "\n".join(body)
      conv = re.search(r"^.* convolution\(.*$", text, re.M)
      if conv:
        kinds[name] = _conv_kind(conv.group(0))
      elif " dot(" in text:
        kinds[name] = "matmul"
      elif " reduce(" in text or "reduce" in name:
        kinds[name] = "reduction"
      elif opcode in ("transpose", "copy") or re.match(r"(transpose|copy)",
                                                       name):
        kinds[name] = "transpose/copy"
      elif opcode in ("fusion", "add", "multiply", "select", "concatenate",
                      "broadcast"):
        kinds[name] = "elementwise"
      else:
        kinds[name] = "other"
  return kinds


def consumers(hlo):
  """{instruction name: names of the instructions that take it as operand}."""
  users = collections.defaultdict(set)
  for line in hlo.splitlines():
    m = re.match(r"^\s*(?:ROOT )?%(\S+) = \S+ \S+?\((.*?)\)(?:,|$)", line)
    if m:
      for operand in re.findall(r"%([\w.\-]+)", m.group(2)):
        users[operand].add(m.group(1))
  return users


def op_times(trace_dir):
  """{op name: total ns} over the XLA threads of a jax.profiler trace."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                           recursive=True))
  if not files:
    raise FileNotFoundError(f"No .xplane.pb trace under {trace_dir}.")
  data = jax.profiler.ProfileData.from_file(files[-1])
  times = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python":  # The host side: dispatch, not XLA ops.
        continue
      for event in line.events:
        if not event.name.startswith(("ThunkExecutor", "end:")):
          times[event.name] += event.duration_ns
  return times


def profile_ops(call, compiled, repeats, trace_dir=None, top=12):
  """Per-kind and per-op XLA time of `call()`, a call of `compiled`.

  Args:
    call: runs one step, blocking (already warmed up).
    compiled: the jax.stages.Compiled it runs (its HLO names the ops).
    repeats: traced calls; times are per call.
    trace_dir: where the trace goes (default: a temporary directory).
    top: how many of the largest ops to list.

  Returns:
    {'ms_per_call': traced op time per call, 'kinds': {kind: {'ms', 'share',
    'ops'}}, 'transposes_feeding': {consumer kind: ms of the transposes/copies
    it takes as operands}, 'top': [[op, kind, ms], ...]}.
  """
  with tempfile.TemporaryDirectory() as tmp:
    trace_dir = trace_dir or tmp
    with jax.profiler.trace(trace_dir):
      for _ in range(repeats):
        call()
    times = op_times(trace_dir)
  return attribute(times, compiled.as_text(), repeats, top)


def attribute(times, hlo, repeats, top=12):
  """Splits traced op times (ns, summed over `repeats` calls) by op kind.

  Ops the trace names but the HLO does not (runtime bookkeeping) are left
  out; a transpose/copy's time is also charged, shared equally, to the kinds
  of the ops that take it as operand. Returns profile_ops's dictionary.
  """
  kinds = op_kinds(hlo)
  per_kind = collections.defaultdict(lambda: [0.0, 0])
  known = {name: ns for name, ns in times.items() if name in kinds}
  for name, ns in known.items():
    per_kind[kinds[name]][0] += ns / repeats / 1e6
    per_kind[kinds[name]][1] += 1
  total = sum(ms for ms, _ in per_kind.values())
  # Which ops the transposes/copies feed: a layout change is paid for the op
  # that needs it.
  users = consumers(hlo)
  fed = collections.Counter()
  for name, ns in known.items():
    if kinds[name] == "transpose/copy":
      fed_kinds = {kinds.get(u, "other") for u in users[name]}
      for kind in fed_kinds:  # Shared equally between the kinds it feeds.
        fed[kind] += ns / repeats / 1e6 / len(fed_kinds)
  return {
      "transposes_feeding": {k: round(v, 2) for k, v in fed.most_common()},
      "ms_per_call": round(total, 2),
      "kinds": {k: {"ms": round(per_kind[k][0], 2),
                    "share": round(per_kind[k][0] / total, 3) if total else 0,
                    "ops": per_kind[k][1]}
                for k in KINDS if k in per_kind},
      "top": [[name, kinds[name], round(ns / repeats / 1e6, 2)]
              for name, ns in collections.Counter(known).most_common(top)]}


def profile_probe(variant, batch, repeats):
  config = benchmark.build_config("ddpm", variant, batch_size=batch)
  step = benchmark.TrainStep(config, parallel.make_mesh())
  step()  # Warm-up.
  return profile_ops(step, step.compiled, repeats, _PROFILE_DIR.value,
                     _TOP.value)


def profile_table(result):
  """The profile probe's result as Markdown: kinds, then the largest ops."""
  lines = [f"XLA op time per call: {result['ms_per_call']:.1f} ms", "",
           "| op kind | ms per call | share | ops |", "|---|---|---|---|"]
  for kind, v in result["kinds"].items():
    lines.append(f"| {kind} | {v['ms']:.1f} | {100 * v['share']:.1f}% | "
                 f"{v['ops']} |")
  lines += ["", "| transposes/copies feeding | ms per call |", "|---|---|"]
  lines += [f"| {kind} | {ms:.1f} |"
            for kind, ms in result["transposes_feeding"].items()]
  lines += ["", "| largest ops | kind | ms per call |", "|---|---|---|"]
  lines += [f"| {name} | {kind} | {ms:.2f} |"
            for name, kind, ms in result["top"]]
  return "\n".join(lines)


# --- Detection cost per entry -------------------------------------------------


def parse_entry_overrides(values):
  """['ENTRY:FIELD=VALUE', ...] -> {entry: ['FIELD=VALUE', ...]}."""
  out = collections.defaultdict(list)
  for value in values:
    entry, sep, override = value.partition(":")
    if not sep or "=" not in override:
      raise app.UsageError(
          f"--entry_override={value!r}: expected ENTRY:FIELD=VALUE, e.g. "
          "ddpm:anomaly.noise_level=100.")
    out[entry].append(override)
  return dict(out)


def detect_costs(variant, batch, repeats, entries=None, entry_overrides=None):
  """Per entry: ms per slice of the score function, and its network calls.

  Every entry's score function is built as `genjax.detect.loop` builds it
  (`scores.make_score_fn` of the method and `anomaly_options`), compiled
  ahead of time on `batch` random slices with an all-brain mask and the
  method's freshly initialised state, and timed with the others
  interleaved, so that a busy moment of the machine falls on every entry.
  Post-processing outside the score function (histograms, connected
  components) is the same for every entry and left out.

  Returns:
    {entry: {'ms_per_slice', 'network_calls_per_slice', 'compile_s'}} in
    the order of the entries.
  """
  from experiments.ablations import compare_models  # pylint: disable=g-import-not-at-top
  from genjax import methods  # pylint: disable=g-import-not-at-top
  from genjax.detect import loop  # pylint: disable=g-import-not-at-top
  from genjax.detect import scores  # pylint: disable=g-import-not-at-top
  entries = tuple(entries or compare_models.ENTRIES)
  unknown = set(entry_overrides or {}) - set(entries)
  if unknown:
    raise ValueError(f"--entry_override names entries not measured: "
                     f"{sorted(unknown)} (measured: {', '.join(entries)}).")
  configs = compare_models.build_configs(variant, entries,
                                         entry_overrides=entry_overrides)
  mesh = parallel.make_mesh()
  calls, out = {}, {}
  for entry, config in configs.items():
    method = methods.get(config)
    opts = loop.anomaly_options(config)
    state = benchmark.init_state(method, config, mesh)
    inputs = benchmark.random_batch(config, jax.random.key(6), batch)
    images, brain = inputs["image"], inputs["brain"]  # All brain.
    rng = jax.random.key(7)
    compiled, compile_s = benchmark.aot_compile(
        jax.jit(scores.make_score_fn(method, opts)), state, images, brain, rng)
    calls[entry] = (lambda c=compiled, a=(state, images, brain, rng):
                    jax.block_until_ready(c(*a)))
    out[entry] = {"network_calls_per_slice": scores.network_calls(
        method, opts)[0], "compile_s": round(compile_s, 2)}
  timing = benchmark.time_calls(calls, repeats)
  for entry, t in timing.items():
    out[entry]["ms_per_slice"] = round(t["median_s"] * 1000 / batch, 3)
  return out


def detect_probe(variant, batch, repeats):
  return detect_costs(variant, batch, repeats, _ENTRIES.value,
                      parse_entry_overrides(_ENTRY_OVERRIDES.value))


def detect_table(result):
  """The detect probe's result as Markdown."""
  lines = ["| entry | network calls / slice | ms / slice | compile s |",
           "|---|---|---|---|"]
  lines += [f"| {entry} | {v['network_calls_per_slice']} | "
            f"{v['ms_per_slice']:.2f} | {v['compile_s']:.1f} |"
            for entry, v in result.items()]
  return "\n".join(lines)


PROBES = {"unet": unet_probe, "convs": conv_probe,
          "groupnorm": groupnorm_probe, "profile": profile_probe,
          "detect": detect_probe}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = [p for p in _PROBES.value if p not in PROBES]
  if unknown:
    raise app.UsageError(f"Unknown probes {unknown}: use {', '.join(PROBES)}.")
  if flags.FLAGS.single_thread:
    benchmark.set_single_thread()
  batch = flags.FLAGS.batch_size or 16
  tables = {"profile": profile_table, "detect": detect_table}
  for name in _PROBES.value:
    result = PROBES[name](flags.FLAGS.config, batch, flags.FLAGS.repeats)
    if name in tables:
      print(tables[name](result), flush=True)
    else:
      print(name, "(milliseconds, medians):", json.dumps(result, indent=1),
            flush=True)

if __name__ == "__main__":
  app.run(main)
