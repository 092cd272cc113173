"""Shared code of the RSNA STR pulmonary-embolism pipeline: labels, windows, DICOM reading,
configs, paths, models, metric. Stage scripts in ``src/`` import from here."""
import os

# albumentations asks PyPI for a newer version on import: no stage may touch the network unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
