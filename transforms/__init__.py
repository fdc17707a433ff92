"""Beam transforms of the pipeline, one module per stage."""
