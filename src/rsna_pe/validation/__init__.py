"""Site validation: how good the pipeline is on a site's own studies and scanners.

Modules by role: ``inputs`` (labels csv, submission.csv or prediction.json files, matched by
study), ``acquisition`` (the scanner fields of a split folder's studies, the subgroup csv),
``metrics`` (bootstrap AUC interval, rates at thresholds, Brier, ECE), ``thresholds``
(operating points fixed on the development cross-validation: operating_points.json),
``calibration`` (temperature or Platt per label fit: calibration.json), ``subgroups`` (grouping
and pooling), ``plots`` and ``report`` (the PNGs, report.md and report.html), ``site`` (all of
it, as ``src/validate_site.py`` runs it). The two files' formats, and applying a calibration,
belong to inference (rsna_pe.infer.operating_points, rsna_pe.infer.calibration), which stores
them in a model bundle (rsna_pe.infer.site_files). See docs/validation.md.
"""
