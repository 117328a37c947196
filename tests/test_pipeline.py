"""The tf.data reader: shapes and fields, normalisation, D4 augmentation, determinism and resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from lensnet.core.errors import LensnetError
from lensnet.data import apply_normalisation, load, normalisation_spec, open_dataset
from lensnet.data.augment import augment_batch, check_augment, d4_transforms
from lensnet.data.pipeline import reader_error
from lensnet.data.synthetic import write_synthetic


def collect(dataset: tf.data.Dataset, take: int | None = None) -> list[dict]:
    if take is not None:
        dataset = dataset.take(take)
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def concat(batches: list[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("two_channel") / "ds"
    write_synthetic(path, 24, image_shape=(16, 16, 2), seed=5, records_per_shard=8, splits={"train": 1.0})
    return path


def raw(info, split: str) -> dict:
    """Every record of a split in manifest order, unnormalised."""
    return concat(collect(load(info, split, batch_size=1000, normalise="none", shuffle=False)))


# ---- info and fields ----------------------------------------------------------------------------------
def test_open_dataset_describes_the_manifest(synthetic_info, synthetic_dataset):
    info = synthetic_info
    assert info.path == synthetic_dataset
    assert info.name == "synthetic"
    assert info.class_names == ["class0", "class1"]
    assert info.image_shape == (16, 16, 1)
    assert info.image_names == ["image"]
    assert info.param_names == ["radius", "amplitude"]
    assert set(info.class_specific_params) == {"radius", "amplitude"}
    assert info.counts == {"train": 32, "val": 16, "test": 16}
    assert list(info.counts) == ["train", "val", "test"]
    assert info.pixel_stats["image"]["split"] == "train"
    assert len(info.checksum) == 64
    assert open_dataset(info) is info


@pytest.mark.parametrize("damage", ["missing_dir", "no_manifest", "bad_json", "bad_version", "no_features"])
def test_open_dataset_errors_are_one_line(tmp_path, synthetic_dataset, copy_dataset, damage):
    if damage == "missing_dir":
        target = tmp_path / "nope"
    elif damage == "no_manifest":
        target = tmp_path
    else:
        target = copy_dataset(synthetic_dataset)
        manifest = target / "manifest.json"
        data = json.loads(manifest.read_text())
        if damage == "bad_json":
            manifest.write_text("{not json")
        elif damage == "bad_version":
            data["schema_version"] = 99
            manifest.write_text(json.dumps(data))
        else:
            del data["features"]
            manifest.write_text(json.dumps(data))
    with pytest.raises(LensnetError) as info:
        open_dataset(target)
    assert "\n" not in str(info.value)
    assert str(target) in str(info.value) or target.name in str(info.value)


def test_load_yields_all_fields_with_shapes_and_dtypes(synthetic_info):
    batch = collect(load(synthetic_info, "val", batch_size=8), take=1)[0]
    assert set(batch) == {"id", "seed", "label", "class_name", "image", "radius", "amplitude"}
    assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int64 and batch["seed"].dtype == np.int64
    assert batch["radius"].dtype == np.float32 and batch["radius"].shape == (8,)
    assert batch["id"].dtype == object and batch["id"][0].startswith(b"synthetic/")
    element = load(synthetic_info, "val", batch_size=8).element_spec
    assert element["image"].shape.as_list() == [None, 16, 16, 1]


def test_load_selected_fields_and_batches(synthetic_info):
    dataset = load(synthetic_info, "val", batch_size=6, fields=("image", "label"))
    batches = collect(dataset)
    assert all(set(b) == {"image", "label"} for b in batches)
    assert [len(b["label"]) for b in batches] == [6, 6, 4]
    dropped = load(synthetic_info, "val", batch_size=6, fields=("label",), drop_remainder=True)
    assert [len(b["label"]) for b in collect(dropped)] == [6, 6]
    assert dropped.element_spec["label"].shape.as_list() == [6]


def test_one_epoch_reads_every_record_once(synthetic_info):
    ordered = raw(synthetic_info, "train")
    shards = [s["file"] for s in synthetic_info.manifest["splits"]["train"]["shards"]]
    assert len(ordered["id"]) == 32 and len(shards) == 2
    shuffled = concat(collect(load(synthetic_info, "train", batch_size=5, normalise="none")))
    assert sorted(shuffled["id"].tolist()) == sorted(ordered["id"].tolist())
    assert shuffled["id"].tolist() != ordered["id"].tolist()  # train shuffles by default
    by_id = dict(zip(ordered["id"].tolist(), ordered["image"]))
    for ident, image in zip(shuffled["id"].tolist(), shuffled["image"]):
        np.testing.assert_array_equal(image, by_id[ident])


def test_unknown_field_and_bad_arguments(synthetic_info):
    with pytest.raises(LensnetError, match="no field 'imgae'"):
        load(synthetic_info, "train", fields=("imgae",))
    with pytest.raises(LensnetError, match="no split 'dev'"):
        load(synthetic_info, "dev")
    with pytest.raises(LensnetError, match="unknown normalisation"):
        load(synthetic_info, "train", normalise="zscore")
    with pytest.raises(LensnetError, match="unknown augmentation"):
        load(synthetic_info, "train", augment="rot")
    with pytest.raises(LensnetError, match="batch_size"):
        load(synthetic_info, "train", batch_size=0)


def test_missing_shard_and_empty_split_fail_before_iteration(synthetic_dataset, copy_dataset, tmp_path):
    copy = copy_dataset(synthetic_dataset)
    (copy / "val-00000-of-00001.tfrecord").unlink()
    with pytest.raises(LensnetError, match="missing: val-00000-of-00001.tfrecord"):
        load(copy, "val")
    only_train = tmp_path / "only_train"
    write_synthetic(only_train, 8, splits={"train": 1.0}, records_per_shard=8)
    with pytest.raises(LensnetError, match="no split 'test'"):
        load(only_train, "test")
    manifest = json.loads((only_train / "manifest.json").read_text())
    manifest["splits"]["val"] = {"count": 0, "per_class": {}, "shards": []}
    (only_train / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LensnetError, match="split 'val' is empty"):
        load(only_train, "val")


# ---- normalisation ------------------------------------------------------------------------------------
def test_standard_and_minmax_are_per_image_per_channel(two_channel):
    info = open_dataset(two_channel)
    standard = concat(collect(load(info, "train", batch_size=24, normalise="standard")))["image"]
    assert standard.shape == (24, 16, 16, 2)
    np.testing.assert_allclose(standard.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(standard.std(axis=(1, 2)), 1, atol=1e-4)
    minmax = concat(collect(load(info, "train", batch_size=24, normalise="minmax")))["image"]
    np.testing.assert_allclose(minmax.min(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(minmax.max(axis=(1, 2)), 1, atol=1e-6)


def test_dataset_normalisation_uses_train_statistics(two_channel):
    info = open_dataset(two_channel)
    spec = normalisation_spec("dataset", info)
    assert json.loads(json.dumps(spec)) == spec and spec["method"] == "dataset" and len(spec["mean"]) == 2
    images = raw(info, "train")["image"].astype(np.float64)
    np.testing.assert_allclose(spec["mean"], images.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(spec["std"], images.std(axis=(0, 1, 2)), rtol=1e-4)
    loaded = concat(collect(load(info, "train", batch_size=24, normalise="dataset", shuffle=False)))["image"]
    np.testing.assert_allclose(loaded, (images - spec["mean"]) / spec["std"], rtol=1e-4, atol=1e-5)
    # A spec dict (what a trained model stores) gives the same result.
    again = concat(collect(load(info, "train", batch_size=24, normalise=spec, shuffle=False)))["image"]
    np.testing.assert_array_equal(again, loaded)


def test_apply_normalisation_in_a_serving_function_and_edge_cases():
    spec = {"method": "standard"}
    serve = tf.function(lambda x: apply_normalisation(x, spec),
                        input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    constant = np.full((2, 8, 8, 1), 3.0, np.float32)
    for method in ("standard", "minmax"):
        out = apply_normalisation(constant, {"method": method}).numpy()
        assert np.isfinite(out).all() and np.all(out == 0)
    x = np.random.default_rng(0).normal(5, 2, (3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(serve(x).numpy(), apply_normalisation(x, spec).numpy())
    np.testing.assert_array_equal(apply_normalisation(x, {"method": "none"}).numpy(), x)
    with pytest.raises(LensnetError, match="channel"):
        apply_normalisation(x, {"method": "dataset", "mean": [0.0, 0.0], "std": [1.0, 1.0]})
    with pytest.raises(LensnetError, match="unknown method"):
        apply_normalisation(x, {"method": "zscore"})


# ---- augmentation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,count", [("d4", 8), ("flip", 4)])
def test_augmentation_is_a_group_element_per_image(synthetic_info, method, count):
    plain = raw(synthetic_info, "train")
    augmented = concat(collect(load(synthetic_info, "train", batch_size=32, normalise="none", shuffle=False,
                                    augment=method, seed=1)))
    assert augmented["id"].tolist() == plain["id"].tolist()
    used = set()
    for original, image in zip(plain["image"], augmented["image"]):
        views = d4_transforms(original)
        allowed = views if method == "d4" else views[:4]  # the first four do not transpose
        matches = [k for k, view in enumerate(allowed) if np.array_equal(view, image)]
        assert matches, "augmented image is not a symmetry of the original"
        used.add(matches[0])
    assert len(used) >= count - 2  # 32 images draw nearly every element


def test_augmentation_keeps_image_pairs_aligned():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((6, 8, 8, 1)).astype(np.float32)
    high = np.kron(low, np.ones((1, 2, 2, 1), np.float32))  # 16x16 upsampled copy
    out = augment_batch({"image": tf.constant(low), "image_hr": tf.constant(high)}, "d4",
                        tf.constant([3, 4], tf.int64))
    np.testing.assert_array_equal(out["image_hr"].numpy()[:, ::2, ::2], out["image"].numpy())


def test_d4_needs_square_images():
    with pytest.raises(LensnetError, match="square"):
        check_augment("d4", {"image": (16, 12, 1)})
    assert check_augment("flip", {"image": (16, 12, 1)}) == "flip"
    assert check_augment(None, {"image": (16, 12, 1)}) is None


# ---- determinism and resume ---------------------------------------------------------------------------
def epochs(info, first_epoch: int, batches: int, seed: int = 7) -> list[dict]:
    dataset = load(info, "train", batch_size=8, augment="d4", seed=seed, first_epoch=first_epoch, repeat=True,
                   fields=("id", "image"))
    return collect(dataset, take=batches)


def test_same_seed_and_epoch_give_the_same_batches(synthetic_info):
    a = epochs(synthetic_info, 0, 8)
    tf.random.set_seed(1234)  # the global seed must not matter
    b = epochs(synthetic_info, 0, 8)
    for x, y in zip(a, b):
        assert x["id"].tolist() == y["id"].tolist()
        np.testing.assert_array_equal(x["image"], y["image"])
    other = epochs(synthetic_info, 0, 4, seed=8)
    assert [x["id"].tolist() for x in other] != [x["id"].tolist() for x in a[:4]]
    # Epochs differ from each other, and each one covers the split.
    assert a[0]["id"].tolist() != a[4]["id"].tolist()
    assert sorted(np.concatenate([x["id"] for x in a[4:]]).tolist()) == sorted(
        np.concatenate([x["id"] for x in a[:4]]).tolist())


def test_first_epoch_reproduces_a_run_from_zero(synthetic_info):
    full = epochs(synthetic_info, 0, 12)  # epochs 0, 1, 2 (4 batches each)
    resumed = epochs(synthetic_info, 2, 4)
    for x, y in zip(full[8:], resumed):
        assert x["id"].tolist() == y["id"].tolist()
        np.testing.assert_array_equal(x["image"], y["image"])
    single = collect(load(synthetic_info, "train", batch_size=8, augment="d4", seed=7, first_epoch=1,
                          fields=("id", "image")))
    assert len(single) == 4 and [b["id"].tolist() for b in single] == [b["id"].tolist() for b in full[4:8]]


def test_cache_gives_a_deterministic_full_permutation(synthetic_info):
    def run():
        return collect(load(synthetic_info, "train", batch_size=8, cache=True, repeat=True, seed=3,
                            fields=("id",)), take=8)

    a, b = run(), run()
    assert [x["id"].tolist() for x in a] == [x["id"].tolist() for x in b]
    ids = np.concatenate([x["id"] for x in a[:4]])
    assert len(set(ids.tolist())) == 32


def test_nan_parameters_pass_through(synthetic_info):
    batch = concat(collect(load(synthetic_info, "train", batch_size=32, augment="d4", normalise="standard")))
    nan = np.isnan(batch["amplitude"])
    assert nan.any() and (~nan).any()
    assert np.all(batch["label"][nan] == 0) and np.all(batch["label"][~nan] == 1)
    assert np.isfinite(batch["radius"]).all() and np.isfinite(batch["image"]).all()


def test_damage_found_while_reading_becomes_one_line(synthetic_dataset, copy_dataset):
    directory = copy_dataset(synthetic_dataset)
    shard = directory / "train-00001-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])
    dataset = load(directory, "train", batch_size=8)  # the files exist, so the damage shows up mid-stream
    with pytest.raises(tf.errors.DataLossError) as caught:
        collect(dataset)
    error = str(reader_error(caught.value, directory))
    assert "\n" not in error and "truncated record" in error and f"lensnet.data check {directory}" in error
    assert "function_node" not in error and "[Op:" not in error
