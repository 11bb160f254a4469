"""Raw MRI preprocessing into the `custom` layout that nifti_folder reads.

Per subject (`run.process_subject`):

  read + reorient to RAS (genjax.data.nifti)
  -> rough head mask (Otsu, largest component, holes filled)    bias.py
  -> N4 bias-field correction inside the head mask               bias.py
  -> registration to the MNI152 2009a T1 (nilearn): moments
     initialisation, rigid, affine, optional B-spline; Mattes MI
     with the dilated template brain mask on the fixed image     register.py
  -> resampling of image, lesion mask, brain mask and other
     modalities onto the output grid                             register.py
  -> brain mask: template mask refined by intensity              skullstrip.py
  -> OUT/<split>/<subject>[_mask|_brain].nii.gz, QC PNG + table  qc.py, run.py

`run.run(...)` discovers subjects, runs them in parallel, resumes, and writes
the QC table; `experiments/preprocess.py` is its command line;
`accuracy.py` measures it on phantom heads with known truth.

SimpleITK is imported lazily (`sitk()`), so the rest of genjax works without
it.
"""

import functools


class PreprocessError(ValueError):
  """A subject cannot be preprocessed; `reason` is a short named cause.

  Reasons: 'bad_input' (unreadable, 4D, NaN, mismatched masks),
  'empty_volume', 'no_head' (no head/background separation: not a scan),
  'registration_diverged', 'not_a_brain' (registered, but nothing like the
  template), 'modality_grid' (a modality that cannot be brought onto the
  reference), 'error' (anything unexpected).
  """

  def __init__(self, reason, message):
    super().__init__(message)
    self.reason = reason


@functools.lru_cache(maxsize=1)
def sitk():
  """Returns the SimpleITK module, or raises ImportError saying how to get it."""
  try:
    import SimpleITK  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "genjax.data.preprocess needs SimpleITK (N4 bias correction and "
        "registration). Install it with: pip install -e '.[preprocess]'"
    ) from e
  return SimpleITK
