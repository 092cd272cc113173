"""From DICOM to model input: windows, reading DICOM, the lung crop, the JPEG set and npz, folds,
the datasets the networks train on.

Map of the package and the order its subpackages import in: docs/architecture.md."""
