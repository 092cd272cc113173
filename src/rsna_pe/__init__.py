"""Shared code of the RSNA STR pulmonary-embolism pipeline: labels, windows, DICOM reading,
configs, paths, models, metric. Stage scripts in ``src/`` import from here."""
