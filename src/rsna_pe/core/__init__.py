"""What every stage needs and nothing else of the project: errors, labels, paths, ids, configs,
the command line, atomic writes, devices, parallel workers.

Map of the package and the order its subpackages import in: docs/architecture.md."""
