"""Hyper-parameter search with KerasTuner: each trial is one complete lensnet run.

A tuning directory (`python -m lensnet.tune --directory tuning/NAME`) holds:

    search.yaml     what is searched (tuner, objective, space, base config); a rerun must match it
    keras_tuner/    KerasTuner's own state: oracle.json, trial_<id>/trial.json, <tuner id>.json
    trials/<id>/    one lensnet run directory per trial (+ tuning.json: objective, epochs, seconds)
    logs/           TensorBoard HParams dashboard: the experiment config and one run per trial
    summary.csv     one row per trial: status, objective, epochs, seconds, hyper-parameters
    best.yaml       the best trial's full fit config: `python -m lensnet.fit --config best.yaml`

Modules: `space` (search-space YAML -> KerasTuner HyperParameters -> fit configs),
`tuner` (oracles that resume cleanly, the Tuner that runs trials, the chief's server),
`report` (summary.csv, best.yaml, HParams, progress lines).

Layer: above training and serving, beside studies and survey (none imports another). May import every
layer below: core, data, models, artifacts, simulate, tasks, training, serving.
"""
