"""Scientific studies built from lensnet's stages (simulate -> fit -> score), each resumable.

Layer: above training and serving, beside tuning and survey (none imports another). May import every
layer below: core, data, models, artifacts, simulate, tasks, training, serving.
"""
