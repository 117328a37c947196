"""Label efficiency (issue 10): nested, id-keyed training subsets in the reader, and
`python -m lensnet.bench label-efficiency` on tiny data (two fractions, one epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensnet.core.errors import run_cli


def ids_of(info, split: str, subset) -> list[str]:
    from lensnet.data import load

    out = []
    for batch in load(info, split, batch_size=7, fields=("id",), shuffle=True, seed=3, subset=subset):
        out.extend(v.decode() for v in batch["id"].numpy())
    return out


def test_subsets_are_nested_fixed_and_seeded(synthetic_info) -> None:
    from lensnet.data.pipeline import subset_ids

    every = set(ids_of(synthetic_info, "train", None))
    small, large = set(subset_ids(synthetic_info, "train", 0.3, 0)), set(subset_ids(synthetic_info, "train", 0.6, 0))
    assert 0 < len(small) < len(large) < len(every) and small <= large <= every
    assert set(ids_of(synthetic_info, "train", (0.3, 0))) == small  # shuffled reading keeps the same records
    assert set(subset_ids(synthetic_info, "train", 1.0, 0)) == every
    assert set(subset_ids(synthetic_info, "train", 0.3, 1)) != small  # another subset seed, another subset


@pytest.mark.slow
def test_bad_fraction_is_one_line(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    from lensnet.fit import main as fit_main

    for value in ("0", "1.5"):
        code = run_cli(fit_main, ["--task", "substructure", "--data", str(synthetic_dataset), "--runs", str(tmp_path),
                                  "--set", f"data.train_fraction={value}", "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == 2 and "data.train_fraction" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_label_efficiency_bench_on_tiny_data(capsys, synthetic_dataset: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from lensnet.bench.__main__ import main as bench_main

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    argv = ["label-efficiency", "--data", str(synthetic_dataset), "--fractions", "0.5,1.0", "--epochs", "1",
            "--pretrain-epochs", "1", "--batch-size", "16", "--runs-dir", str(tmp_path / "runs"),
            "--set", "model.args.filters=[8,16]", "--set", "train.precise_bn_batches=2",
            "--set", "run.verbose=0", "--pretrain-set", "task.projection_dim=8",
            "--pretrain-set", "task.projection_hidden=16"]
    assert run_cli(bench_main, argv) == 0
    out = capsys.readouterr().out
    assert "published anchors" in out and "0.969" in out
    results = sorted((tmp_path / "results").glob("label-efficiency-*Z.json"))
    assert len(results) == 1
    rows = json.loads(results[0].read_text())["rows"]
    assert [(r["fraction"], r["mode"]) for r in rows] == [(f, m) for f in (0.5, 1.0)
                                                           for m in ("scratch", "probe", "finetune")]
    assert all(r["accuracy"] is not None for r in rows)
    half = {r["n_train"] for r in rows if r["fraction"] == 0.5}
    assert len(half) == 1 and 0 < half.pop() < 32
    ids = json.loads(next((tmp_path / "results").glob("*-ids.json")).read_text())
    assert ids["ids"]["1"] == "all" and len(ids["ids"]["0.5"]) == rows[0]["n_train"]
    assert next((tmp_path / "results").glob("label-efficiency-*.png")).stat().st_size > 0
    run = Path(rows[0]["run"])
    assert (run / "train_ids.txt").read_text().split() == ids["ids"]["0.5"]  # the run recorded what it saw
    probe = Path(rows[1]["run"]) / "config.yaml"
    assert "freeze: backbone" in probe.read_text() and "pretrain-simclr" in probe.read_text()
