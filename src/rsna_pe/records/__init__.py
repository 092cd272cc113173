"""What made an output: records and their chain (provenance), shards of stages 1 and 4.

Map of the package and the order its subpackages import in: docs/architecture.md."""
