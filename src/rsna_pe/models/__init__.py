"""Networks only: the slice CNN, the stage-6 head and its options, exam targets, losses, and
rebuilding a network from its config.

Map of the package and the order its subpackages import in: docs/architecture.md."""
