"""KerasTuner pieces: oracles that resume cleanly, the Tuner whose trials are lensnet runs, the chief's server.

KerasTuner (1.4.8) keeps the search state; lensnet adds what a kill needs:

* an interrupted trial stays bound to the tuner that ran it. KerasTuner's `Oracle.reload`
  sends it to the retry queue of *any* tuner instead: after a chief restart a second
  worker could then train it into the same directory while the first one still does,
  and the chief could stop before the first one reports. In a single process the
  tuner id is always the same, so the trial simply runs again, first thing.
* a trial whose `trial.json` was saved but not `oracle.json` (a kill between the two
  writes) is unknown to the oracle's bookkeeping and is dropped; one that had already
  ended is not run twice.
* a trial's run resumes from its last checkpoint when its directory holds the same
  config (lensnet runs resume exactly); a finished run is read, not retrained.
* N consecutive failed trials stop the search (no new trials, workers exit normally)
  instead of raising inside the chief's gRPC handler, which strands the workers.

Hyperband's continuing trials (tuner/trial_id, tuner/initial_epoch -> tuner/epochs) copy
the earlier trial's run directory and resume it up to tuner/epochs, as
`lensnet.fit --resume --epochs N` would (the cosine schedule is laid over the new length).
A trial's objective is the best value over its run's whole history, inherited epochs
included, so it matches the run's best checkpoint. A trial's `seconds` is the wall time
of the attempt that finished it.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras_tuner as kt
import yaml
from keras_tuner.src import config as kt_config
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import base_tuner
from keras_tuner.src.engine.trial import TrialStatus

from lensnet.core.config import dump_yaml, load_yaml
from lensnet.core.errors import LensnetError
from lensnet.tuning import evolution, pruning, report
from lensnet.tuning.space import SearchSpace, trial_config

IDLE_WAIT = 1.0  # seconds between requests while Hyperband waits for other workers' trials
# Differences that do not make a trial another trial: where it runs and how chatty it is.
_IGNORED = ("run.name", "run.dir", "run.verbose", "distribute")


@dataclass
class TrialSetup:
    """What every trial of a search needs, identical on the chief and every worker."""

    base: dict  # resolved fit config the trial values are applied to
    space: SearchSpace
    objective: str  # e.g. val_macro_roc_auc
    direction: str  # max | min
    directory: Path

    @property
    def trials_dir(self) -> Path:
        return self.directory / "trials"

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"


class ResumableOracle(pruning.PruningOracle):
    """Mixin for KerasTuner oracles: see the module docstring."""

    stop_reason: str | None = None
    announce: Callable[[str, Any], None] | None = None  # the chief prints trial events as the oracle sees them

    def populate_space(self, trial_id: str) -> dict:
        if self.stop_reason or self.budget_spent():
            return {"status": TrialStatus.STOPPED}
        return super().populate_space(trial_id)

    def _check_consecutive_failures(self) -> None:
        try:
            super()._check_consecutive_failures()
        except RuntimeError as exc:
            self.stop_reason = str(exc).strip().splitlines()[0]

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._interrupted = dict(self.ongoing_trials)

    def reload(self) -> None:
        self._interrupted = {}
        super().reload()
        for tuner_id, trial in self._interrupted.items():
            if trial.trial_id in self._retry_queue:
                self._retry_queue.remove(trial.trial_id)
            if trial.trial_id in self.end_order:  # killed after it ended, before the last save
                continue
            trial.status = TrialStatus.RUNNING
            self.ongoing_trials[tuner_id] = trial
        started = set(self.start_order)
        for trial_id in [t for t in self.trials if t not in started]:
            del self.trials[trial_id]
            shutil.rmtree(os.path.join(self._project_dir, f"trial_{trial_id}"), ignore_errors=True)

    def create_trial(self, tuner_id: str) -> Any:
        trial = super().create_trial(tuner_id)
        if self.announce and trial.status == TrialStatus.RUNNING:
            self.announce("start", trial)
        return trial

    def end_trial(self, trial: Any) -> None:
        super().end_trial(trial)
        if self.announce:
            self.announce("end", self.trials[trial.trial_id])


class BayesianOracle(ResumableOracle, kt.oracles.BayesianOptimizationOracle):
    pass


class HyperbandOracle(ResumableOracle, kt.oracles.HyperbandOracle):
    pass


class RandomOracle(ResumableOracle, kt.oracles.RandomSearchOracle):
    pass


class PBTOracle(ResumableOracle, evolution.PBTOracle):
    pass


class EvolutionOracle(ResumableOracle, evolution.EvolutionOracle):
    pass


@dataclass
class SearchOptions:
    """What each tuner takes beside the space and objective (`python -m lensnet.tune --help`)."""

    max_trials: int | None
    seed: int
    max_failures: int
    max_epochs: int  # hyperband: epochs of the longest trials
    factor: int = 3
    hyperband_iterations: int = 1
    initial_points: int | None = None
    population: int | None = None  # pbt (default 4) and evolution (default 8)
    rounds: int = 3  # pbt
    sample_size: int = 3  # evolution
    pruner: pruning.MedianStopping | None = None
    epoch_budget: int | None = None  # stop starting trials once this many epochs were trained (lensnet.tuning.pruning)


def _bayesian(setup: TrialSetup, options: SearchOptions, common: dict) -> kt.Oracle:
    # with a handful of trials the GP's length scales often sit at their bounds; sklearn says so every trial
    warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
    return BayesianOracle(max_trials=options.max_trials, num_initial_points=options.initial_points, **common)


def _random(setup: TrialSetup, options: SearchOptions, common: dict) -> kt.Oracle:
    return RandomOracle(max_trials=options.max_trials, **common)


def _hyperband(setup: TrialSetup, options: SearchOptions, common: dict) -> kt.Oracle:
    oracle = HyperbandOracle(max_epochs=options.max_epochs, factor=options.factor,
                             hyperband_iterations=options.hyperband_iterations, **common)
    oracle.max_trials = options.max_trials  # the brackets decide unless capped; create_trial honours it
    return oracle


def _pbt(setup: TrialSetup, options: SearchOptions, common: dict) -> kt.Oracle:
    return PBTOracle(population=options.population or 4, rounds=options.rounds,
                     epochs_per_round=int(setup.base["train"]["epochs"]), trials_dir=setup.trials_dir, **common)


def _evolution(setup: TrialSetup, options: SearchOptions, common: dict) -> kt.Oracle:
    return EvolutionOracle(population=options.population or 8, sample_size=options.sample_size,
                           max_trials=options.max_trials, **common)


ORACLES: dict[str, Callable[[TrialSetup, SearchOptions, dict], kt.Oracle]] = {
    "bayesian": _bayesian, "hyperband": _hyperband, "random": _random, "pbt": _pbt, "evolution": _evolution}
TUNERS = tuple(ORACLES)


def make_oracle(kind: str, setup: TrialSetup, options: SearchOptions) -> kt.Oracle:
    if kind not in ORACLES:
        raise LensnetError(f"unknown tuner {kind!r}; valid: {', '.join(TUNERS)}")
    common = {
        "objective": kt.Objective(setup.objective, setup.direction),
        "hyperparameters": setup.space.hyperparameters(),
        "allow_new_entries": False,  # the space file is the whole space
        # KerasTuner reads seed 0 as "no seed" (`seed or random.randint(...)`): shift it so 0 is reproducible
        "seed": int(options.seed) + 1,
        "max_consecutive_failed_trials": options.max_failures,
    }
    oracle = ORACLES[kind](setup, options, common)
    oracle.pruner = options.pruner
    oracle.epoch_budget = options.epoch_budget
    oracle.verbose = 0  # lensnet prints its own one-line progress
    return oracle


def comparable(config: dict, ignore: tuple[str, ...]) -> dict:
    """`config` as plain YAML data without the dotted keys (or whole sections) in `ignore`."""
    plain = yaml.safe_load(dump_yaml(config))
    for dotted in ignore:
        *parents, leaf = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return plain


def _copy_ignore(directory: str, names: list[str]) -> list[str]:
    """What a warm-started trial does not inherit: the parent's tuning result and its per-run summaries."""
    skip = {report.TRIAL_RESULT}
    if Path(directory).name == "logs":
        skip |= {"hparams", "eval"}
    return [n for n in names if n in skip]


class LensnetTuner(base_tuner.BaseTuner):
    """Each trial = one `run_fit` into <directory>/trials/<trial_id>/, objective read from its history."""

    def __init__(self, oracle: kt.Oracle, setup: TrialSetup, *, verbose: int = 0, report_epochs: bool = False) -> None:
        self.setup = setup
        self.verbose = verbose
        self.report_epochs = report_epochs  # per-epoch objective to the oracle, which may stop the trial (pruning)
        self.ran: list[str] = []
        self._outcome: dict[str, dict] = {}
        # KerasTuner prints every failed trial's traceback (DEBUG is on by default); the one-line reason is
        # printed instead, and the traceback stays in keras_tuner/trial_<id>/trial.json
        kt_config.DEBUG = False
        super().__init__(oracle=oracle, hypermodel=None, directory=str(setup.directory), project_name="keras_tuner",
                         overwrite=False)

    # ---- the search loop ---------------------------------------------------------------
    def search(self, *fit_args: Any, **fit_kwargs: Any) -> None:
        """KerasTuner's loop, with the chief served by `serve_oracle` and a pause while the oracle is IDLE."""
        if dist_utils.is_chief_oracle():
            self.save()
            serve_oracle(self.oracle, os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
            return
        self.on_search_begin()
        while True:
            trial = self.oracle.create_trial(self.tuner_id)
            if trial.status == TrialStatus.STOPPED:
                break
            if trial.status == TrialStatus.IDLE:
                time.sleep(IDLE_WAIT)
                continue
            self.on_trial_begin(trial)
            self._try_run_and_update_trial(trial)
            self.on_trial_end(trial)
        self.on_search_end()

    def on_trial_begin(self, trial: Any) -> None:
        print(start_line(trial, self.setup.space), flush=True)

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)  # reports to the oracle (local or chief) and saves
        self.ran.append(trial.trial_id)
        outcome = self._outcome.get(trial.trial_id, {})
        best = self.oracle.get_best_trials(1)
        best = best[0] if best and best[0].status == TrialStatus.COMPLETED else None
        print(end_line(trial.trial_id, trial.status, self.setup.objective, outcome,
                       report.failure_reason(trial.message), best), flush=True)

    # ---- one trial -----------------------------------------------------------------------
    def run_trial(self, trial: Any, *fit_args: Any, **fit_kwargs: Any) -> dict:
        import keras

        from lensnet.training.trainer import run_fit

        setup, values, trial_id = self.setup, trial.hyperparameters.values, trial.trial_id
        run_dir = setup.trials_dir / trial_id
        try:
            config = trial_config(setup.base, setup.space, values, run_dir=setup.trials_dir, run_name=trial_id,
                                  epochs=values.get("tuner/epochs"))
            if config["run"]["verbose"] == "auto":
                config["run"]["verbose"] = self.verbose
            mode = self._prepare(run_dir, config, values.get("tuner/trial_id"))
            previous = report.read_trial_result(run_dir) if mode == "done" else {}
            seconds, pruned_at = previous.get("seconds"), previous.get("pruned_at")
            if mode != "done":
                reporter = [pruning.epoch_reporter(self.oracle, trial_id, setup.objective)][: int(self.report_epochs)]
                seconds = run_fit(config, resume=mode == "resume", progress=False, extra_callbacks=reporter).seconds
                pruned_at = reporter[0].pruned_at if reporter else None
            value, best_epoch, epochs = report.objective_from_history(run_dir, setup.objective, setup.direction)
            last_value = report.objective_at_last_epoch(run_dir, setup.objective)
        except LensnetError as exc:  # a bad combination or a diverged run: this trial fails, the search goes on
            raise kt.errors.FailedTrialError(" ".join(str(exc).split())) from None
        finally:
            keras.backend.clear_session()  # free the trial's graphs before the next one
        outcome = {"trial_id": trial_id, "tuner": self.tuner_id, "objective": setup.objective, "value": value,
                   "best_epoch": best_epoch, "epochs": epochs, "seconds": seconds,
                   "values": setup.space.decoded(values), "warm_start_from": values.get("tuner/trial_id"),
                   "last_value": last_value, "pruned_at": pruned_at}
        report.write_trial_result(run_dir, outcome)
        report.write_trial_hparams(setup.logs_dir, trial_id, trial.hyperparameters,
                                   {setup.objective: value, "epochs": epochs, "seconds": seconds})
        self._outcome[trial_id] = outcome
        return {setup.objective: value}

    def _prepare(self, run_dir: Path, config: dict, parent: str | None) -> str:
        """done (finished run of this trial: read it) | resume (its checkpoint) | fresh."""
        from lensnet.artifacts.runs import read_run
        from lensnet.training.callbacks import STATE

        saved = run_dir / "config.yaml"
        if saved.is_file():
            previous = load_yaml(saved, "trial config")
            if comparable(previous, _IGNORED) == comparable(config, _IGNORED):
                if (run_dir / "run.json").is_file() and read_run(run_dir).status == "finished":
                    print(f"trial {run_dir.name}: its run had finished; reading it", flush=True)
                    return "done"
            longer = (*_IGNORED, "train.epochs")  # a resumed run may train for more epochs (Hyperband)
            if (run_dir / STATE).is_file() and comparable(previous, longer) == comparable(config, longer):
                done = load_yaml(run_dir / STATE, "run state").get("epochs_done")
                print(f"trial {run_dir.name}: resuming its run after epoch {done}", flush=True)
                return "resume"
        if run_dir.exists():  # a start that never reached a checkpoint, or another trial's leftovers
            shutil.rmtree(run_dir)
        if parent is None:
            return "fresh"
        source = self.setup.trials_dir / parent
        if not (source / STATE).is_file():
            print(f"trial {run_dir.name}: trial {parent} left no checkpoint to continue; training from scratch",
                  flush=True)
            return "fresh"
        tmp = run_dir.with_name(f".{run_dir.name}.copy-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=_copy_ignore)
        os.replace(tmp, run_dir)
        return "resume"


def start_line(trial: Any, space: SearchSpace, who: str = "") -> str:
    values = trial.hyperparameters.values
    line = f"trial {trial.trial_id} start{who}: {report.describe_values(space.decoded(values))}"
    if "tuner/epochs" in values:
        line += f"  [epochs {values['tuner/initial_epoch'] + 1}-{values['tuner/epochs']}"
        line += f", continuing trial {values['tuner/trial_id']}]" if values.get("tuner/trial_id") else "]"
    return line


def end_line(trial_id: str, status: str, objective: str, outcome: dict, reason: str, best: Any) -> str:
    if status != TrialStatus.COMPLETED:
        return f"trial {trial_id} {status}: {reason or 'no result'} (details: keras_tuner/trial_{trial_id}/trial.json)"
    line = f"trial {trial_id} COMPLETED: {objective} {outcome.get('value', float('nan')):.4g}"
    if outcome.get("epochs"):
        seconds = outcome.get("seconds")
        line += f" (best epoch {outcome.get('best_epoch')} of {outcome['epochs']}"
        line += f", pruned after epoch {outcome['pruned_at']}" if outcome.get("pruned_at") else ""
        line += f", {seconds:.0f} s)" if seconds is not None else ")"
    if best is not None and best.score is not None:
        line += f"; best so far {best.score:.4g} (trial {best.trial_id})"
    return line


def chief_announcer(setup: TrialSetup, oracle: kt.Oracle) -> Callable[[str, Any], None]:
    """Trial events as the chief's oracle sees them (workers print their own)."""

    def announce(event: str, trial: Any) -> None:
        if event == "start":
            tuner = next((t for t, running in oracle.ongoing_trials.items() if running is trial), "")
            print(start_line(trial, setup.space, f" on {tuner}" if tuner else ""), flush=True)
            return
        outcome = report.read_trial_result(setup.trials_dir / trial.trial_id)
        best = oracle.get_best_trials(1)
        best = best[0] if best and best[0].status == TrialStatus.COMPLETED else None
        print(end_line(trial.trial_id, trial.status, setup.objective, outcome, report.failure_reason(trial.message),
                       best), flush=True)

    return announce


def serve_oracle(oracle: kt.Oracle, ip: str, port: str, poll: float = 0.5) -> None:
    """The chief: serve the oracle over gRPC until every tuner has been told to stop.

    KerasTuner's `oracle_chief.start_server` polls every 20 s once the first worker is told
    to stop and never stops its server; here the poll is short and `server.stop(grace)` lets
    the last STOPPED reply reach its worker (which otherwise waits for the chief for an hour).
    """
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{ip}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise LensnetError(f"the chief cannot listen on {address} (port in use or address not local)")
    server.start()
    print(f"chief: oracle listening on {address}; waiting for workers", flush=True)
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll)
    finally:
        server.stop(grace=5).wait()
