"""Site validation: how good the pipeline is on a site's own studies and scanners.

Modules by role: ``inputs`` (labels csv, submission.csv or prediction.json files, matched by
study), ``acquisition`` (scanner fields of a series, the subgroup csv), ``metrics`` (bootstrap
AUC interval, rates at thresholds, Brier, ECE), ``thresholds`` (operating points fixed on the
development cross-validation: operating_points.json), ``calibration`` (temperature or Platt
per label: calibration.json), ``subgroups`` (grouping and pooling), ``plots`` and ``report``
(the PNGs, report.md and report.html), ``site`` (all of it, as ``src/validate_site.py`` runs it).
See docs/validation.md.
"""
