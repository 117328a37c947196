"""The trainer behind `lensnet.fit`, `lensnet.evaluate` and `lensnet.tune`.

Layer: above simulate and tasks, beside serving (the two never import each other). May import lensnet.core,
data, models, artifacts, simulate and tasks.
"""
