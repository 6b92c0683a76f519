"""The bottom layer: errors, logging, the registry, safe YAML, and the run config (sections, technique fields, sources, columns)."""
