"""The pipeline's stages, one folder each with its config and ``run``: label, distill, evaluate, export, student,
demo, preflight."""
