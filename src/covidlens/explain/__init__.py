"""Explanations: class activation maps (cam.py), their overlays (render.py) and statistics (heatmap_stats.py),
intermediate activation maps (activations.py), and the `covidlens explain` pipeline (pipeline.py).

Submodules are imported where used, so `import covidlens.explain` loads no model code.
"""
