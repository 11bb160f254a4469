"""The anomaly detector's public names: a facade over `genjax.detect`.

  python -m experiments.main --config=configs/ddpm.py:cpu --workdir=runs/ddpm_cpu --mode=detect

The detector lives in the package `genjax.detect` (its docstring says what it
computes and writes); this module keeps `from genjax import anomaly` working
for the experiments, the evaluator and the tests.
"""

# pylint: disable=unused-import
from genjax import protocol
from genjax.detect.batches import batch_to_device
from genjax.detect.batches import check_single_host
from genjax.detect.batches import eval_batches
from genjax.detect.batches import has_split
from genjax.detect.histograms import defined as _defined
from genjax.detect.histograms import dice_counts
from genjax.detect.histograms import dice_from_counts
from genjax.detect.histograms import histogram_threshold_at_fpr
from genjax.detect.histograms import new_histogram
from genjax.detect.histograms import threshold_bin
from genjax.detect.histograms import update_subject_hists
from genjax.detect.loop import ANOMALY_FIELDS
from genjax.detect.loop import anomaly_options
from genjax.detect.loop import detect
from genjax.detect.loop import detect_mode
from genjax.detect.loop import healthy_threshold
from genjax.detect.loop import scored_batches
from genjax.detect.maps import colorize
from genjax.detect.maps import fit_geometry
from genjax.detect.maps import MapWriter
from genjax.detect.maps import slice_to_volume_plane
from genjax.detect.maps import to_stored_grid
from genjax.detect.maps import volume_geometry
from genjax.detect.maps import voxel_ml_fn
from genjax.detect.maps import write_subject_maps
from genjax.detect.postprocess import erode
from genjax.detect.postprocess import remove_small_components
from genjax.detect.report import _finite
from genjax.detect.report import detection_figure
from genjax.detect.report import fmt
from genjax.detect.report import reproduce_command
from genjax.detect.report import write_detect_report
from genjax.detect.report import write_examples
from genjax.detect.report import write_json
from genjax.detect.scores import mahalanobis
from genjax.detect.scores import make_score_fn
from genjax.detect.scores import median_filter
from genjax.detect.scores import network_calls
from genjax.detect.scores import residual_map
from genjax.detect.scores import slice_scores

# Per-subject histograms live with the protocol that splits subjects.
write_subject_histograms = protocol.write_subject_histograms
load_subject_histograms = protocol.load_subject_histograms
pooled_histogram = protocol.pooled_histogram
