"""Scientific studies built from lensnet's stages (simulate -> fit -> score), each resumable."""
