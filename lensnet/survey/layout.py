"""The names in a pipeline results folder (see lensnet.survey.run), importable without TensorFlow."""

PIPELINE_JSON = "pipeline.json"  # inputs, settings, stages (cards + versions), interpretation, totals, status
CANDIDATES = "candidates.csv"  # one row per candidate
MARKS = "marks.json"  # the dashboard's marks: {"marks": {id: {"mark": ..., "at": ...}}}
PARTS = "parts"  # one CSV + one JSON marker per finished unit
CUTOUTS = "cutouts"  # ID.npy raw pixels of each candidate, ID.json its bands and orientation
