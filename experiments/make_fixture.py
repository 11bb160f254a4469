r"""Writes a benchmark dataset's on-disk layout from phantom subjects.

  python -m experiments.make_fixture --layout=brats --out=/tmp/brats --subjects=6
  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/brats \
      --config.data.dataset=nifti_folder --config.data.builder_config=brats \
      --config.data.manual_dir=/tmp/brats --config.data.eval_split=test --mode=data

Layouts: brats, ixi, atlas, mslub, wmh (genjax.data.fixtures says what each
file is). The files have the release's names, nesting, dtypes, orientation
and label values; the subjects are phantoms with lesions on the patient's
left. Prints one line per subject: id, split, slices, lesion voxels.
"""

import json
import os

from absl import app
from absl import flags

from genjax.data import fixtures

_LAYOUT = flags.DEFINE_enum("layout", None, list(fixtures.LAYOUTS),
                            "Dataset layout to write.")
_OUT = flags.DEFINE_string("out", None, "Folder to write (the manual_dir).")
_SUBJECTS = flags.DEFINE_integer("subjects", 6, "Number of subjects.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 64, "In-plane matrix; the field of view is the release's "
    "(240 for BraTS and 256 for IXI give the real voxel sizes).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the phantom subjects.")
flags.mark_flags_as_required(["layout", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _SUBJECTS.value < 1 or _IMAGE_SIZE.value < 8:
    raise app.UsageError("--subjects must be >= 1 and --image_size >= 8.")
  out = os.path.expanduser(_OUT.value)
  written = fixtures.write_layout(_LAYOUT.value, out,
                                  n_subjects=_SUBJECTS.value,
                                  image_size=_IMAGE_SIZE.value,
                                  seed=_SEED.value)
  for subject in written["subjects"]:
    truth = written["truth"][subject]
    print(f"{subject}\t{written['splits'][subject]}\t{truth['n_slices']} "
          f"slices\t{truth['lesion_voxels']} lesion voxels")
  summary = {k: written[k] for k in ("subjects", "splits", "truth")}
  with open(os.path.join(out, "fixture.json"), "w") as f:
    json.dump(summary, f, indent=1, default=str)
  print(f"Wrote {len(written['subjects'])} {_LAYOUT.value} subjects to {out} "
        "(truth in fixture.json).")


if __name__ == "__main__":
  app.run(main)
