"""What every other part of lensnet shares: configs, errors, atomic files, progress, tables, plugins (the one
registration mechanism), HTTP plumbing, and TensorFlow's quiet start-up.

Layer: the floor. Imports no other lensnet package.
"""
