"""The simulator as a RecordSource: record index -> class label, per-record seed, images, parameters."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lensnet.data.audit import image_statistics
from lensnet.data.schema import Schema
from lensnet.data.writer import RecordBatch, ShardPlan, image_stats

if TYPE_CHECKING:
    from lensnet.simulate.scene_spec import SceneSpec


def record_seed(seed: int, index: int) -> int:
    """Per-record seed from the dataset seed and the global record index (fits in an int64)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SimulationSource:
    """Builds its lenstronomy objects once per process (`setup`) and simulates records by index."""

    def __init__(self, config: dict, seed: int, spec: SceneSpec | None = None) -> None:
        from lensnet.simulate.scenes import build_simulator

        simulator = build_simulator(config, spec)
        self.config = config
        self.spec = simulator.spec  # parsed once: workers rebuild their simulator from it, not from the config
        self.seed = int(seed)
        self.class_names = list(simulator.class_names)
        self.schema = Schema.standard(simulator.image_shapes, simulator.param_names,
                                      getattr(simulator, "text_fields", ()))
        self.prevalence = config.get("prevalence")
        self.class_specific_params = set(getattr(simulator, "class_specific_params", ()))
        self._simulator = simulator

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_simulator"] = None  # rebuilt in each worker: lenstronomy objects do not travel well
        return state

    def setup(self) -> None:
        if self._simulator is None:
            from lensnet.simulate.scenes import build_simulator

            self._simulator = build_simulator(self.config, self.spec)

    def label_of(self, plan: ShardPlan, index: int) -> int:
        """Classes cycle within each split, so every split is balanced; with a prevalence p (lens finding)
        record i of a split is a lens (class 0) when floor((i + 1) p) > floor(i p): lenses evenly spaced."""
        if not self.class_names:
            return -1
        i = index - plan.split_start
        if self.prevalence is not None:
            p = float(self.prevalence)
            return 0 if math.floor((i + 1) * p) > math.floor(i * p) else 1
        return i % len(self.class_names)

    def population_summary(self, params: dict, labels: np.ndarray) -> dict | None:
        """The simulator's own summary of the drawn population for the manifest (None when it has none)."""
        summarise = getattr(self._simulator or self._build(), "summarise", None)
        return summarise(params, labels) if summarise else None

    def _build(self) -> object:
        self.setup()
        return self._simulator

    def records(self, plan: ShardPlan, start: int, stop: int) -> RecordBatch:
        simulator = self._simulator
        schema = self.schema
        param_names = schema.param_names
        name = self.config.get("name", "dataset")
        serialized, labels = [], []
        params = np.empty((stop - start, len(param_names)), dtype=np.float64)
        images: dict[str, list] = {n: [] for n in schema.image_names}
        for row, index in enumerate(range(start, stop)):
            label = self.label_of(plan, index)
            seed = record_seed(self.seed, index)
            arrays, values = simulator.simulate(max(label, 0), np.random.default_rng(seed))
            record = {
                "id": f"{name}/{index:08d}",
                "seed": seed,
                "label": label,
                "class_name": self.class_names[label] if label >= 0 else "",
                **arrays,
                **values,
            }
            serialized.append(schema.encode(record))
            labels.append(label)
            params[row] = [values[p] for p in param_names]
            for n in images:
                images[n].append(arrays[n])
        stacked = {n: np.stack(v) for n, v in images.items()}
        stats = {n: image_stats(v) for n, v in stacked.items()}
        summary = image_statistics(stacked[schema.image_names[0]]) if schema.image_names else None
        return RecordBatch(serialized, np.asarray(labels, dtype=np.int64), params, stats, summary)
