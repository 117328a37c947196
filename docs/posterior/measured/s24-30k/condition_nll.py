"""The flow's negative log-density per lens for one checkpoint of a posterior run (docs/posterior.md,
"Fixed 30,000 vs fresh at equal steps").

    PYTHONPATH=. python docs/posterior/measured/s24-30k/condition_nll.py runs/s24/fixed30k-nopbn last train

Prints the mean and median NLL of the first 31 batches of SPLIT (in order, unaugmented) with the summary in
inference mode, and the loss of the training path (`compute_step(training=True)`, which also advances the
moving statistics of the loaded copy; nothing is saved). CHECKPOINT: best or last.
"""

from __future__ import annotations

import sys

import numpy as np


def main(run_dir: str, checkpoint: str, split: str) -> None:
    from lensnet.core.tfboot import quiet_import

    quiet_import()
    import keras
    import tensorflow as tf

    from lensnet.core.config import load_yaml
    from lensnet.tasks.posterior import PosteriorModel
    from lensnet.training.data import eval_batches
    from lensnet.training.evaluation import open_run_on

    _, task, info, _ = open_run_on(run_dir, None, split)
    config = load_yaml(f"{run_dir}/config.yaml", "run config")
    loaded = keras.saving.load_model(f"{run_dir}/checkpoints/{checkpoint}.keras", safe_mode=True, compile=False)
    if not isinstance(loaded, PosteriorModel):  # best.keras holds the network whose output is the samples
        network = keras.Model(loaded.inputs, {"summary": loaded.get_layer("summary").output, "samples": loaded.output})
        loaded = PosteriorModel(network, condition=config["task"]["condition"])
    model = loaded
    nll, path_loss = [], []
    for i, (x, y, *_) in enumerate(eval_batches(info, task, config, split)):
        if i == 31:
            break
        y = tf.cast(y, tf.float32)
        summary = model.hooks.summary(x, training=False)
        nll.append(-model.sampler.log_density(y, summary, training=False).numpy())
        path_loss.append(float(model.compute_step(x, y, training=True)[0]))
    nll = np.concatenate(nll)
    print(f"{run_dir} {checkpoint} {split}: {nll.size} lenses, inference-mode NLL mean {nll.mean():.3f} "
          f"median {np.median(nll):.3f}; training-path loss {np.mean(path_loss):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
