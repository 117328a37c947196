"""The survey library under `python -m lensnet.pipeline` (find -> classify -> interpret) and `lensnet.dashboard`.

    tiles      inputs (cutouts, datasets, large FITS images) -> tiles with pixel boxes and RA/Dec
    stages     exported models as pipeline stages, their table columns
    merge      detections of one object -> one (by the position each tile saw; or NMS on boxes)
    interpret  saliency from an exported model: integrated gradients, Grad-CAM, attention rollout
    pngs       thumbnails (Lupton colour composites, north up) and overlays
    layout     the names in a results folder
    run        the resumable pipeline into a results folder
    dashboard  the web app over a results folder (and a training run); its client is in static/
    synthetic  survey images with injected lenses and an untrained peak finder (tests, bench pipeline-e2e)
    field      a synthetic g,r,i survey field with galaxies, stars, lenses, masks and its truth catalogue
               (`python -m lensnet.survey synth`; bench survey-field)

Layer: above training and serving, beside tuning and studies (none imports another). May import every
layer below: core, data, models, artifacts, simulate, tasks, training, serving.
"""
