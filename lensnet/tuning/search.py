"""The hyper-parameter search behind `python -m lensnet.tune`: roles, the search directory, the run.

Every trial is a complete lensnet.fit run (lensnet.tuning.tuner); this module resolves the
search from the command's arguments, claims its directory, runs it and writes the summary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensnet.core.errors import LensnetError

ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
SEARCH_FILE = "search.yaml"
# What --overwrite removes: only what a search writes, never other files the user keeps there.
SEARCH_OUTPUTS = ("keras_tuner", "trials", "logs", "summary.csv", "best.yaml", SEARCH_FILE)


@dataclass(frozen=True)
class TuneSettings:
    """Everything a search needs (what `lensnet tune` parses; field names are its flags, - as _).

    The base run's fields (task ... cpu_devices, run_name, runs) are read back into a fit config by
    lensnet.training.config.cli_overrides, as lensnet fit's flags are."""

    # the base run
    task: str | None = None
    model: str | None = None
    data: str | None = None
    target: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    config: str | None = None
    set: list[str] = field(default_factory=list)
    strategy: str | None = None
    cpu_devices: int | None = None
    # the search
    tuner: str = "bayesian"
    max_trials: int | None = None
    directory: str | None = None
    space: str | None = None
    objective: str | None = None
    max_epochs: int | None = None
    factor: int = 3
    hyperband_iterations: int = 1
    population: int | None = None  # pbt / evolution (default 4 / 8)
    rounds: int = 3  # pbt
    sample_size: int = 3  # evolution's tournament
    prune: str = "none"  # none | median (lensnet.tuning.pruning)
    prune_grace: int = 1
    prune_min_peers: int = 3
    epoch_budget: int | None = None  # any tuner: no new trial once the trials trained this many epochs
    initial_points: int | None = None
    max_consecutive_failures: int = 3
    overwrite: bool = False
    verbose: int = 0  # Keras output inside trials
    no_progress: bool = False
    # distributed search
    role: str | None = None
    oracle_address: str | None = None
    tuner_id: str | None = None
    wait: float = 600.0
    # after the search
    retrain_best: bool = False
    retrain_epochs: int | None = None
    runs: str | None = None
    run_name: str | None = None


def resolve_role(args: TuneSettings, environ: Mapping[str, str] = os.environ) -> tuple[str, dict | None]:
    """(single | chief | worker, the KERASTUNER_* variables to set or None)."""
    if args.role is None and (args.oracle_address or args.tuner_id):
        raise LensnetError("--oracle-address and --tuner-id need --role chief or --role worker")
    role = args.role
    if role is None:
        if not environ.get("KERASTUNER_ORACLE_IP"):
            return "single", None
        missing = [name for name in ENV if not environ.get(name)]
        if missing:
            raise LensnetError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not")
        role = "chief" if "chief" in environ["KERASTUNER_TUNER_ID"] else "worker"
    if args.oracle_address:
        host, sep, port = args.oracle_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise LensnetError(f"--oracle-address must be HOST:PORT, got {args.oracle_address!r}")
    elif environ.get("KERASTUNER_ORACLE_IP") and environ.get("KERASTUNER_ORACLE_PORT"):
        host, port = environ["KERASTUNER_ORACLE_IP"], environ["KERASTUNER_ORACLE_PORT"]
    else:
        raise LensnetError(f"--role {role} needs --oracle-address HOST:PORT (or KERASTUNER_ORACLE_IP and "
                           "KERASTUNER_ORACLE_PORT)")
    if role == "chief":
        tuner_id = "chief"
    else:
        tuner_id = args.tuner_id or environ.get("KERASTUNER_TUNER_ID")
        if not tuner_id:
            raise LensnetError("a worker needs --tuner-id NAME (unique among the workers, the same after a restart: "
                               "an interrupted trial goes back to the worker of that name)")
        if "chief" in tuner_id:
            raise LensnetError(f"worker id {tuner_id!r} contains 'chief', which KerasTuner reserves for the chief")
    return role, {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": port}


@contextlib.contextmanager
def kerastuner_env(values: dict | None) -> Iterator[None]:
    """KerasTuner reads its role from the environment; set it for the search only."""
    saved = {name: os.environ.get(name) for name in ENV}
    for name in ENV:
        os.environ.pop(name, None)
    os.environ.update(values or {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def logged_metrics(task: Any) -> list[str]:
    """What Keras logs for this task every epoch: loss and the task's metrics, on train and val."""
    names = ["loss", *(metric.name for metric in task.metrics())]
    return names + [f"val_{name}" for name in names]


def resolve_objective(spec: str | None, task: Any, train: dict) -> tuple[str, str]:
    from lensnet.training.trainer import monitor_mode

    name, _, mode = (spec or train["monitor"] or f"val_{task.monitor}").partition(":")
    valid = logged_metrics(task)
    if name not in valid:
        raise LensnetError(f"objective '{name}' is not a metric task {task.name} logs; valid: {', '.join(valid)}")
    if mode not in ("", "max", "min"):
        raise LensnetError(f"objective direction must be max or min, got '{mode}'")
    return name, mode or monitor_mode(name, task)


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first dotted key where two YAML trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if old != new else None


def check_search_file(directory: Path, settings: dict) -> bool:
    """True if `directory` already holds this search; an error if it holds another one."""
    import yaml

    from lensnet.core.config import load_yaml

    path = directory / SEARCH_FILE
    if not path.is_file():
        return False
    old = load_yaml(path, "search description")
    new = yaml.safe_load(yaml.safe_dump(settings))
    where = first_difference(old, new)
    if where:
        raise LensnetError(f"{directory} holds another search ({where} differs from {path}); rerun the same command "
                           "to resume it, or use --overwrite or another --directory")
    return True


def wait_for_search_file(directory: Path, settings: dict, timeout: float) -> None:
    """A worker runs trials only for the search its chief described."""
    deadline = time.monotonic() + timeout
    announced = False
    while not check_search_file(directory, settings):
        if time.monotonic() > deadline:
            raise LensnetError(f"no chief described a search in {directory} within {timeout:.0f} s")
        if not announced:
            print(f"worker: waiting for the chief to describe the search in {directory}", flush=True)
            announced = True
        time.sleep(0.5)


def build_setup(args: TuneSettings, role: str) -> tuple[Any, dict]:
    """The checked search (TrialSetup) and its description for search.yaml; every error comes before any trial."""
    from lensnet.tasks import task_from_config
    from lensnet.training.config import cli_overrides, resolve_fit_config
    from lensnet.training.distribute import split_cpu
    from lensnet.training.trainer import resolve_dataset
    from lensnet.tuning.space import check_space, default_space_path, load_space
    from lensnet.tuning.tuner import TrialSetup, comparable

    base = resolve_fit_config(args.task, args.config, cli_overrides(args))
    split_cpu(int(base["distribute"]["cpu_devices"]))  # before the checks below start TensorFlow's devices
    if role != "single" and not base["data"]["path"]:
        # several processes simulating the task's default dataset into one place would race
        raise LensnetError("a distributed search needs an existing dataset: give --data DIR (simulate it first)")
    info = resolve_dataset(base, progress=not args.no_progress)
    task = task_from_config(base, info)
    task.check_data_options(base["data"])
    objective, direction = resolve_objective(args.objective, task, base["train"])
    base["train"]["monitor"] = objective  # checkpoints and early stopping follow the objective
    space = load_space(args.space or default_space_path(base["model"]["name"], task.name))
    check_space(space, base, task, info.image_shape)
    directory = Path(args.directory or Path("tuning") / f"{task.name}-{base['model']['name']}-{args.tuner}")
    oracle = {"hyperband": {"max_epochs": args.max_epochs or int(base["train"]["epochs"]), "factor": args.factor,
                            "hyperband_iterations": args.hyperband_iterations},
              "bayesian": {"initial_points": args.initial_points},
              "pbt": {"population": args.population or 4, "rounds": args.rounds},
              "evolution": {"population": args.population or 8, "sample_size": args.sample_size}}.get(args.tuner, {})
    settings = {"tuner": args.tuner, "objective": f"{objective}:{direction}", "seed": int(base["run"]["seed"]),
                "oracle": oracle, "space": space.as_dict(), "base": comparable(base, ("run", "distribute"))}
    pruner = search_pruner(args)
    if pruner is not None:  # absent when off, so the search.yaml of earlier searches still matches
        settings["pruning"] = pruner.as_dict()
    if args.epoch_budget:  # absent when off, as pruning
        settings["epoch_budget"] = int(args.epoch_budget)
    return TrialSetup(base=base, space=space, objective=objective, direction=direction, directory=directory), settings


def search_pruner(args: TuneSettings) -> Any:
    from lensnet.tuning.pruning import MedianStopping

    if args.prune == "median":
        return MedianStopping(grace=args.prune_grace, min_peers=args.prune_min_peers)
    return None


def claim_directory(directory: Path, settings: dict, role: str, args: TuneSettings) -> None:
    """Workers wait for the chief's search.yaml; the chief (or a single process) writes it or checks it matches."""
    if role == "worker":
        wait_for_search_file(directory, settings, args.wait)
        return
    if args.overwrite:
        for entry in SEARCH_OUTPUTS:
            path = directory / entry
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    if not check_search_file(directory, settings):
        from lensnet.core.config import dump_yaml
        from lensnet.core.fileio import write_text

        write_text(directory / SEARCH_FILE, dump_yaml(settings))


def print_start(kind: str, setup: Any, oracle: Any, max_trials: int | None, max_epochs: int, role: str,
                epoch_budget: int | None = None) -> None:
    epochs = f"up to {max_epochs} epochs" if kind == "hyperband" else f"{setup.base['train']['epochs']} epochs"
    trials = f"{max_trials} trials" if max_trials else "trials as the brackets need"
    if epoch_budget:
        trials = f"trials until {epoch_budget} epochs are trained{f' (at most {max_trials})' if max_trials else ''}"
    print(f"search: {kind} over {len(setup.space.params)} parameters of {setup.space.path}; objective "
          f"{setup.objective} ({setup.direction}); {trials} of {epochs}; directory {setup.directory}", flush=True)
    if oracle.trials:
        statuses = [t.status for t in oracle.trials.values()]
        interrupted = sorted(t.trial_id for t in oracle.ongoing_trials.values())
        line = (f"resuming: {statuses.count('COMPLETED')} trial(s) completed, {statuses.count('FAILED')} failed "
                "(kept)")
        if interrupted:
            line += f"; interrupted trial(s) {', '.join(interrupted)} run again"
            line += " first" if role == "single" else " on the worker(s) that had them"
        print(line, flush=True)


def finish(setup: Any, oracle: Any, kind: str, seconds: float) -> Path | None:
    """summary.csv, best.yaml and the closing lines; returns best.yaml's path (None if no trial completed)."""
    from lensnet.tuning import report

    trials = list(oracle.trials.values())
    rows = report.trial_rows(trials, setup.space, setup.objective, setup.trials_dir)
    summary = setup.directory / "summary.csv"
    report.write_summary(summary, rows, setup.objective, setup.space.keys())
    statuses = [t.status for t in trials]
    print(f"\nsearch finished in {seconds:.0f} s: {len(trials)} trial(s), {statuses.count('COMPLETED')} completed, "
          f"{statuses.count('FAILED')} failed")
    completed = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
    best_path = None
    if completed:
        best = completed[0]
        best_path = setup.directory / "best.yaml"
        header = (f"best trial {best.trial_id} of the {kind} search in {setup.directory}: "
                  f"{setup.objective} {best.score:.6g}\nretrain: python -m lensnet.fit --config {best_path}")
        report.write_best(best_path, setup.trials_dir / best.trial_id, setup.base["run"], header)
        print(f"best: trial {best.trial_id}, {setup.objective} {best.score:.4g}")
    else:
        print("no trial completed: no best.yaml")
    print(f"  summary      {summary}")
    if best_path:
        print(f"  best config  {best_path}  (python -m lensnet.fit --config {best_path})")
        print(f"  best run     {setup.trials_dir / completed[0].trial_id}")
    print(f"  trials       {setup.trials_dir}/<id>/ (complete runs: evaluate or export any of them)")
    print(f"  tensorboard  tensorboard --logdir {setup.logs_dir}  (HParams dashboard)")
    return best_path


def retrain(best_path: Path, args: TuneSettings) -> None:
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import print_result, run_fit

    overrides: dict = {}
    if args.run_name:
        overrides["run"] = {"name": args.run_name}
    if args.retrain_epochs:
        overrides["train"] = {"epochs": args.retrain_epochs}
    config = resolve_fit_config(None, best_path, overrides)  # exactly what `lensnet.fit --config` does
    print(f"\nretraining the best config {best_path}", flush=True)
    print_result(run_fit(config, progress=not args.no_progress))


def run_search(args: TuneSettings) -> int:
    """The whole `lensnet.tune` command after argument parsing: search, summary, best.yaml, optional retrain."""
    role, env = resolve_role(args)
    if role == "worker" and (args.overwrite or args.retrain_best):
        raise LensnetError("--overwrite and --retrain-best belong to the chief, not a worker")
    from lensnet.core.tfboot import quiet_import

    tf = quiet_import()
    tf.get_logger().setLevel("ERROR")  # many models in one process: tf.function retracing notes are expected
    setup, settings = build_setup(args, role)
    claim_directory(setup.directory, settings, role, args)

    from lensnet.tuning.report import write_hparams_config
    from lensnet.tuning.tuner import LensnetTuner, SearchOptions, chief_announcer, make_oracle

    # an epoch budget, a hyperband's brackets: no trial cap unless given
    max_trials = args.max_trials or (None if args.tuner == "hyperband" or args.epoch_budget else 10)
    if args.tuner == "pbt":
        max_trials = (args.population or 4) * args.rounds
    max_epochs = args.max_epochs or int(setup.base["train"]["epochs"])
    pruner = search_pruner(args)
    options = SearchOptions(max_trials=max_trials, seed=int(setup.base["run"]["seed"]),
                            max_failures=args.max_consecutive_failures, max_epochs=max_epochs, factor=args.factor,
                            hyperband_iterations=args.hyperband_iterations, initial_points=args.initial_points,
                            population=args.population, rounds=args.rounds, sample_size=args.sample_size,
                            pruner=pruner, epoch_budget=args.epoch_budget)
    t0 = time.perf_counter()
    with kerastuner_env(env):
        oracle = make_oracle(args.tuner, setup, options)
        # reloads the directory's search, if any
        tuner = LensnetTuner(oracle, setup, verbose=args.verbose,
                             report_epochs=pruner is not None or bool(args.epoch_budget))
        if role != "worker":
            write_hparams_config(setup.logs_dir, setup.space.hyperparameters(), setup.objective)
            print_start(args.tuner, setup, tuner.oracle, max_trials, max_epochs, role, args.epoch_budget)
        if role == "chief":
            tuner.oracle.announce = chief_announcer(setup, tuner.oracle)
        tuner.search()
    summary = setup.directory / "summary.csv"
    if role == "worker":
        print(f"worker {env['KERASTUNER_TUNER_ID']}: the search is over; trials run here: "
              f"{', '.join(tuner.ran) or 'none'}. The chief writes {summary}")
        return 0
    best = finish(setup, tuner.oracle, args.tuner, time.perf_counter() - t0)
    if tuner.oracle.stop_reason:
        raise LensnetError(f"search stopped: {tuner.oracle.stop_reason} (--max-consecutive-failures); "
                           f"see the message column of {summary}")
    if best is None:
        raise LensnetError(f"no trial completed; the message column of {summary} says why")
    if args.retrain_best:
        retrain(best, args)
    return 0
