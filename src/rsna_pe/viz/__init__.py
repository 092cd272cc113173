"""What people look at: activation maps, the report figure, the study viewer.

Map of the package and the order its subpackages import in: docs/architecture.md."""
