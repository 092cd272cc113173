"""Shared code of the RSNA STR pulmonary-embolism pipeline, split by role into subpackages
(core, metric, records, data, synthetic, models, train, infer, viz, validation); the stage
scripts in ``src/`` import from here. Map: docs/architecture.md."""
import os

# albumentations asks PyPI for a newer version on import: no stage may touch the network unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
