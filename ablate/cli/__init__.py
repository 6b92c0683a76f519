"""The command line: the command registry, the entry point, and the sample and export commands."""
