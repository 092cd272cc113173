"""Synthetic CT pulmonary angiograms in the Kaggle RSNA STR PE layout, for tests and the demo.

Each study is one axial series sampled from a 3-D chest phantom in HU (:mod:`.anatomy`): body,
lungs with vessel texture, spine and ribs, heart with right and left ventricles, aorta, and a
contrast-filled pulmonary arterial tree (trunk, right/left main arteries, lobar arteries).
Findings follow the competition's label rules (:mod:`.findings`): emboli as filling defects,
their site and shape giving the side, central and chronicity labels, the RV/LV chamber ratio,
indeterminate exams with poor contrast or motion. :mod:`.plan` decides every study up front,
:mod:`.dicom` writes the files, :mod:`.dataset` the whole set with its csvs; :mod:`.scanner`
images the same studies as another site's scanner would (a second site for site validation);
:mod:`.profiles` reads the named sets of configs/profiles.yml (the demo's, the bench's). Slices
spread over the whole chest, or lie thin and contiguous over a slab (``slice_spacing``).

The anatomy is exaggerated on purpose (arteries and defects are large) so that a CNN sees a
defect at 64 px input. Everything is determined by the seed: the same seed gives byte-identical
CSVs and DICOM files.

Public API: :func:`generate` (a whole data set), :func:`write_series` / :func:`write_slice`
(DICOM with exact, caller-given HU, for reader tests), :func:`encode_frame`.
"""
from .anatomy import (
                      ARTERY_SCALE,
                      HU_MAX,
                      HU_MIN,
                      LPA_T,
                      PA_HALF,
                      RPA_T,
                      TRUNK_T,
                      Phantom,
                      phantom,
                      render_series,
)
from .dataset import MANIFEST, OUTPUT_NAMES, VERSION, SyntheticSet, fov_mask, generate
from .dicom import COMPRESSED_SYNTAXES, RESCALE_VARIANTS, encode_frame, write_series, write_slice
from .findings import CENTRAL_SITES, LEFT_SITES, LOBAR_SITES, LOBAR_WEIGHTS, RIGHT_SITES, SITE_T, Embolus
from .plan import StudySpec, plan
from .scanner import ScannerShift
from .shapes import Canvas, Capsule, Disk

__all__ = [
    "ARTERY_SCALE", "CENTRAL_SITES", "COMPRESSED_SYNTAXES", "Canvas", "Capsule", "Disk",
    "Embolus", "HU_MAX", "HU_MIN", "LEFT_SITES", "LOBAR_SITES", "LOBAR_WEIGHTS", "LPA_T",
    "MANIFEST", "OUTPUT_NAMES", "PA_HALF", "Phantom", "RESCALE_VARIANTS", "RIGHT_SITES", "RPA_T",
    "SITE_T", "ScannerShift", "StudySpec", "SyntheticSet", "TRUNK_T", "VERSION", "encode_frame", "fov_mask",
    "generate", "phantom", "plan", "render_series", "write_series", "write_slice",
]
