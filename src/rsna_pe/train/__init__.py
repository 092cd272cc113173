"""The training engine and what plugs into it: tasks, checkpoints, loaders, optimisers, tracking,
out-of-fold outputs, run records.

Map of the package and the order its subpackages import in: docs/architecture.md."""
