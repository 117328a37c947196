"""The trainer behind `lensnet.fit`, `lensnet.evaluate` and `lensnet.tune`."""
