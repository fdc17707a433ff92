"""The classification pipeline: options, config, graph and the operators' CLI."""
