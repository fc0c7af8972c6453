"""Pipelines: composed plain steps (load volume, preprocess, predict, postprocess) on one series or image."""
