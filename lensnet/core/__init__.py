"""What every other part of lensnet shares: configs, errors, atomic files, progress, run directories, versions."""
