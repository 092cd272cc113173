"""From trained models to predictions: embedding, the ensemble, CNN/head pairs, bundles.

Map of the package and the order its subpackages import in: docs/architecture.md."""
