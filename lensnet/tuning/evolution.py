"""Evolutionary searches as KerasTuner oracles: population-based training and regularised evolution.

Both keep all their state in KerasTuner's own records (each trial's values, status and score,
plus the trial's tuning.json in the shared search directory), so chief/worker distribution,
resume after a kill and the summary work as for KerasTuner's own oracles; the ResumableOracle
mixin of lensnet.tuning.tuner is put in front of them there.

* PBT (Jaderberg et al. 2017, arXiv:1711.09846): a population of `population` members trains
  in `rounds` rounds of `train.epochs` epochs each; one trial = one member's round. Round r+1
  starts when every trial of round r has ended. The members are ranked by the objective at the
  last epoch of their round; each of the worst `fraction` copies the weights and values of one
  of the best `fraction` ("exploit": the trial continues that member's run, as Hyperband's
  continuing trials do, tuner/trial_id) and perturbs its training hyper-parameters ("explore":
  a number x0.8 or x1.25 within its range, a choice redrawn with probability 0.25). The
  architecture (model.*, train.optimizer: they define the weights and optimizer slots being
  copied) is inherited unchanged. tuner/member and tuner/round record the lineage.
* Regularised evolution (Real et al. 2019, arXiv:1802.01548): `population` random trials, then
  each new trial is the best of `sample_size` trials drawn from the `population` most recently
  completed ones (older ones have aged out) with one hyper-parameter mutated (redrawn to another
  value). tuner/parent records the lineage; no weights are inherited.

Every random draw of a trial is seeded by (search seed, trial id), so a resumed search makes
the same choices.
"""

from __future__ import annotations

import random
from typing import Any

import keras_tuner as kt
from keras_tuner.src.engine.trial import TrialStatus

from lensnet.tuning import report

# value keys KerasTuner carries beside the hyper-parameters (lensnet.tuning.space skips tuner/*)
MEMBER, ROUND, PARENT, WARM_START = "tuner/member", "tuner/round", "tuner/parent", "tuner/trial_id"
# What PBT never perturbs: it defines the weights and optimizer slots a member copies.
INHERITED_PREFIXES = ("model.", "train.optimizer")
PERTURB_FACTORS = (0.8, 1.25)
RESAMPLE_PROBABILITY = 0.25
_ENDED = (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.INVALID)


def _rng(seed: int, *key: Any) -> random.Random:
    return random.Random(":".join(str(k) for k in (seed, *key)))


def _better(direction: str) -> Any:
    """Sort key putting the best objective value first."""
    return (lambda v: -v) if direction == "max" else (lambda v: v)


def _redraw(hp: Any, value: Any, rng: random.Random) -> Any:
    """Another value of `hp` than `value` (the same only when the range allows nothing else)."""
    for _ in range(20):
        new = hp.random_sample(rng.randrange(2**31))
        if new != value:
            return new
    return value


def perturb(hp: Any, value: Any, rng: random.Random) -> Any:
    """PBT's explore step for one value."""
    if isinstance(hp, kt.engine.hyperparameters.Choice):
        return _redraw(hp, value, rng) if rng.random() < RESAMPLE_PROBABILITY else value
    if isinstance(hp, (kt.engine.hyperparameters.Float, kt.engine.hyperparameters.Int)):
        new = value * rng.choice(PERTURB_FACTORS)
        new = min(max(new, hp.min_value), hp.max_value)
        if isinstance(hp, kt.engine.hyperparameters.Int):
            step = hp.step or 1
            new = int(round((new - hp.min_value) / step) * step + hp.min_value)
            if new == value:  # x0.8 of a small integer rounds back: move one step that way instead
                new = min(max(value + (step if new >= value and rng.random() < 0.5 else -step), hp.min_value),
                          hp.max_value)
        return new
    return value


class PBTOracle(kt.Oracle):
    """Population-based training (see the module docstring)."""

    def __init__(self, *, population: int, rounds: int, epochs_per_round: int, fraction: float = 0.25,
                 trials_dir: Any, **kwargs: Any) -> None:
        super().__init__(max_trials=population * rounds, **kwargs)
        self.population, self.rounds, self.epochs_per_round = int(population), int(rounds), int(epochs_per_round)
        self.fraction = float(fraction)
        self.trials_dir = trials_dir

    def _by_round(self) -> dict[int, dict[int, Any]]:
        rounds: dict[int, dict[int, Any]] = {}
        for trial_id in self.start_order:
            values = self.trials[trial_id].hyperparameters.values
            rounds.setdefault(int(values[ROUND]), {})[int(values[MEMBER])] = self.trials[trial_id]
        return rounds

    def ready_value(self, trial: Any) -> float | None:
        """The objective at the last epoch of the trial's round (what PBT ranks on); None if it failed."""
        if trial.status != TrialStatus.COMPLETED:
            return None
        value = report.read_trial_result(self.trials_dir / trial.trial_id).get("last_value")
        return trial.score if value is None else float(value)

    def populate_space(self, trial_id: str) -> dict:
        rounds = self._by_round()
        current = max(rounds, default=-1)
        issued = rounds.get(current, {})
        if current >= 0 and len(issued) < self.population:
            return self._member(current, len(issued), rounds)
        if current >= 0 and any(t.status not in _ENDED for t in issued.values()):
            return {"status": TrialStatus.IDLE}  # the round is not over: rank only when every member reported
        if current + 1 >= self.rounds:
            return {"status": TrialStatus.STOPPED}
        return self._member(current + 1, 0, rounds)

    def _member(self, round_: int, member: int, rounds: dict) -> dict:
        epochs = {ROUND: round_, MEMBER: member, "tuner/initial_epoch": round_ * self.epochs_per_round,
                  "tuner/epochs": (round_ + 1) * self.epochs_per_round}
        if round_ == 0:
            values = self._random_values()
            if values is None:
                return {"status": TrialStatus.STOPPED}
            # no parent key at all: gRPC cannot carry a None value to a worker
            return {"status": TrialStatus.RUNNING, "values": {**values, **epochs}}
        previous = rounds[round_ - 1]
        ranked = sorted((m for m in previous if self.ready_value(previous[m]) is not None),
                        key=lambda m: (_better(self.objective.direction)(self.ready_value(previous[m])), m))
        if not ranked:
            return {"status": TrialStatus.STOPPED}  # every member failed: nothing to continue
        cut = max(1, int(self.population * self.fraction))
        losers = set(ranked[len(ranked) - cut:]) if len(ranked) > cut else set()
        losers |= {m for m in previous if m not in ranked}  # a failed member always takes over a winner
        if member not in losers:
            source = previous[member]
            return {"status": TrialStatus.RUNNING, "values": {**self._space_values(source), **epochs,
                                                               WARM_START: source.trial_id}}
        rng = _rng(self.seed, "pbt", round_, member)
        source = previous[rng.choice(ranked[:cut])]
        values = self._space_values(source)
        for hp in self.hyperparameters.space:
            if hp.name in values and not hp.name.startswith(INHERITED_PREFIXES):
                values[hp.name] = perturb(hp, values[hp.name], rng)
        return {"status": TrialStatus.RUNNING, "values": {**values, **epochs, WARM_START: source.trial_id}}

    def _space_values(self, trial: Any) -> dict:
        return {hp.name: trial.hyperparameters.values[hp.name] for hp in self.hyperparameters.space
                if hp.name in trial.hyperparameters.values}


class EvolutionOracle(kt.Oracle):
    """Regularised (ageing) evolution (see the module docstring)."""

    def __init__(self, *, population: int, sample_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.population, self.sample_size = int(population), int(sample_size)

    def populate_space(self, trial_id: str) -> dict:
        if len(self.trials) < self.population:
            values = self._random_values()
            if values is None:
                return {"status": TrialStatus.STOPPED}
            return {"status": TrialStatus.RUNNING, "values": values}
        alive = [self.trials[t] for t in self.end_order if self.trials[t].status == TrialStatus.COMPLETED]
        alive = alive[-self.population:]  # the oldest age out, however good they were
        if not alive:
            running = any(t.status == TrialStatus.RUNNING for t in self.ongoing_trials.values())
            return {"status": TrialStatus.IDLE if running else TrialStatus.STOPPED}
        rng = _rng(self.seed, "evolution", trial_id)
        sample = rng.sample(alive, min(self.sample_size, len(alive)))
        parent = min(sample, key=lambda t: (_better(self.objective.direction)(t.score), int(t.trial_id)))
        space = [hp for hp in self.hyperparameters.space if hp.name in parent.hyperparameters.values]
        for _ in range(50):  # a mutation already tried is drawn again
            values = {hp.name: parent.hyperparameters.values[hp.name] for hp in space}
            hp = rng.choice(space)
            values[hp.name] = _redraw(hp, values[hp.name], rng)
            if not self._duplicate(values):
                break
        return {"status": TrialStatus.RUNNING, "values": {**values, PARENT: parent.trial_id}}

