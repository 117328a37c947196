"""Pruning for any tuner: the median-stopping rule (Golovin et al. 2017, Google Vizier).

Each trial reports its objective to the oracle at the end of every epoch, through KerasTuner's
own `oracle.update_trial` (a gRPC call to the chief in a distributed search, so the chief alone
decides and every worker sees the same curves). After `grace` epochs, a trial whose best value
so far at epoch e is worse than the median of the best values so far at epoch e of the other
trials that reached epoch e (at least `min_peers` of them) is stopped: its run ends after that
epoch, finished, with its checkpoints, and the trial completes with the value it reached.

The curves live in the oracle's state (oracle.json), saved whenever a trial starts or ends.
Epochs are counted as Keras counts them, so a warm-started trial (Hyperband, PBT) reports the
epochs it trains at their absolute number.

The same reports give the search an epoch budget (`--epoch-budget`, any tuner): the epochs
trained so far are the points on all curves (a warm-started trial's curve holds only the epochs
it trained itself), and no trial starts once they reach the budget. A trial that starts below
the budget trains to its end, so a search overshoots by less than one trial per tuner process.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

EPOCH_KEY = "lensnet/epoch"  # marks a per-epoch report (not the trial's final result) in update_trial
PRUNERS = ("none", "median")


@dataclass(frozen=True)
class MedianStopping:
    grace: int = 1  # epochs every trial trains before it can be stopped
    min_peers: int = 3  # other trials that must have reached the epoch

    def as_dict(self) -> dict:
        return {"rule": "median", "grace": self.grace, "min_peers": self.min_peers}

    def should_stop(self, curve: dict[int, float], peers: list[dict[int, float]], epoch: int, direction: str) -> bool:
        """True if the trial with `curve` ({epoch: value}) should stop after `epoch`."""
        if epoch <= self.grace:
            return False
        mine = best_so_far(curve, epoch, direction)
        if mine is None:
            return False
        others = [v for v in (best_so_far(p, epoch, direction) for p in peers if epoch in p) if v is not None]
        if len(others) < self.min_peers:
            return False
        median = statistics.median(others)
        return mine < median if direction == "max" else mine > median


def best_so_far(curve: dict[int, float], epoch: int, direction: str) -> float | None:
    values = [v for e, v in curve.items() if e <= epoch and math.isfinite(v)]
    if not values:
        return None
    return max(values) if direction == "max" else min(values)


class PruningOracle:
    """Mixin for oracles: per-epoch reports, the pruning decision, the curves in the oracle's state."""

    pruner: MedianStopping | None = None
    epoch_budget: int | None = None  # no new trial once the curves hold this many epochs

    def budget_spent(self) -> bool:
        return bool(self.epoch_budget) and self.epochs_spent() >= int(self.epoch_budget)

    def epochs_spent(self) -> int:
        """Epochs reported by all trials, each trial's own only (a warm start's inherited ones are its parent's)."""
        return sum(len(curve) for curve in self.curves().values())

    def update_trial(self, trial_id: str, metrics: dict, step: int = 0) -> Any:
        if EPOCH_KEY not in metrics:
            return super().update_trial(trial_id, metrics, step)
        from keras_tuner.src.engine.trial import Trial, TrialStatus

        epoch = int(metrics[EPOCH_KEY])
        curves = self.curves()
        curve = curves.setdefault(str(trial_id), {})
        curve[epoch] = float(metrics[self.objective.name])  # NaN too: the epoch counts against the budget
        status = TrialStatus.RUNNING
        if self.pruner is not None:
            peers = [c for t, c in curves.items() if t != str(trial_id)]
            if self.pruner.should_stop(curve, peers, epoch, self.objective.direction):
                status = TrialStatus.STOPPED
                self._pruned[str(trial_id)] = epoch
        trial = self.trials[trial_id]
        return Trial(trial.hyperparameters.copy(), trial_id=trial_id, status=status)

    def curves(self) -> dict[str, dict[int, float]]:
        if not hasattr(self, "_curves"):
            self._curves: dict[str, dict[int, float]] = {}
            self._pruned: dict[str, int] = {}
        return self._curves

    def pruned(self) -> dict[str, int]:
        self.curves()
        return self._pruned

    def get_state(self) -> dict:
        state = super().get_state()
        state["lensnet_curves"] = {t: {str(e): v for e, v in c.items()} for t, c in self.curves().items()}
        state["lensnet_pruned"] = dict(self.pruned())
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._curves = {t: {int(e): float(v) for e, v in c.items()} for t, c in state.get("lensnet_curves", {}).items()}
        self._pruned = {t: int(e) for t, e in state.get("lensnet_pruned", {}).items()}


def epoch_reporter(oracle: Any, trial_id: str, objective: str) -> Any:
    """A Keras callback reporting `objective` to `oracle` after each epoch and stopping when told to.

    A non-finite value is reported too (best_so_far skips it), so every trained epoch is counted."""
    import keras

    class EpochReporter(keras.callbacks.Callback):
        pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(objective)
            if value is None:
                return
            reply = oracle.update_trial(trial_id, {objective: float(value), EPOCH_KEY: epoch + 1}, step=epoch + 1)
            if getattr(reply, "status", None) == "STOPPED":
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return EpochReporter()
