r"""Plots scalars from a workdir's TensorBoard events as a PNG.

  python -m experiments.plot_scalars --workdir=runs/ddpm_cpu --tags=loss \
      --out=runs/ddpm_cpu/loss.png
"""

import os

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from genjax.train import read_scalars

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_TAGS = flags.DEFINE_list("tags", ["loss"], "Scalar tags to plot.")
_OUT = flags.DEFINE_string("out", None, "PNG path (default WORKDIR/<tags>.png).")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  fig, axes = plt.subplots(1, len(_TAGS.value), squeeze=False,
                           figsize=(4.5 * len(_TAGS.value), 3.2))
  for ax, tag in zip(axes[0], _TAGS.value):
    points = read_scalars(_WORKDIR.value, tag)
    if not points:
      raise app.UsageError(f"No scalar {tag!r} in {_WORKDIR.value}.")
    steps, values = zip(*points)
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_title(tag)
    ax.set_yscale("log" if min(values) > 0 else "linear")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  out = _OUT.value or os.path.join(_WORKDIR.value,
                                   "_".join(_TAGS.value) + ".png")
  fig.savefig(out, dpi=110)
  print(f"Wrote {out}")


if __name__ == "__main__":
  app.run(main)
