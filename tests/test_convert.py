"""`python -m lensnet.convert`: DeepLense .npy folders and FITS cutouts into datasets the reader loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lensnet.convert import main
from lensnet.core.errors import run_cli
from lensnet.data import load, open_dataset
from lensnet.data.check import check_dataset

SIZE = 16


def convert(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(main, [*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def records(directory: Path) -> dict[str, dict]:
    """id -> record (numpy values) over every split."""
    info = open_dataset(directory)
    out = {}
    for split in info.counts:
        for batch in load(info, split, batch_size=256, normalise="none", shuffle=False):
            batch = {k: v.numpy() for k, v in batch.items()}
            for i, ident in enumerate(batch["id"]):
                out[ident.decode()] = {"split": split, **{k: v[i] for k, v in batch.items()}}
    return out


def save_tree(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    for relpath, array in arrays.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array, allow_pickle=array.dtype == object)
    return root


def rng_images(seed: int, n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def deeplense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Three classes, one per accepted single-band shape, 6 files each."""
    shapes = {"cdm": (SIZE, SIZE), "no_sub": (1, SIZE, SIZE), "vort": (SIZE, SIZE, 1)}
    arrays = {}
    for k, (name, shape) in enumerate(shapes.items()):
        for i, image in enumerate(rng_images(k, 6, shape)):
            arrays[f"{name}/{name}_{i:02d}.npy"] = image
    root = tmp_path_factory.mktemp("deeplense") / "model_x"
    return save_tree(root, arrays), arrays


def test_npy_in_three_shapes(deeplense, tmp_path, capsys):
    root, arrays = deeplense
    out = tmp_path / "ds"
    code, stdout, err = convert(["deeplense-npy", str(root), "--out", str(out), "--splits", "0.5,0.25,0.25",
                                 "--records-per-shard", "4"], capsys)
    assert code == 0, err
    assert "dataset complete" in stdout and "classes cdm, no_sub, vort" in stdout
    info = open_dataset(out)
    assert info.class_names == ["cdm", "no_sub", "vort"]
    assert info.image_shape == (SIZE, SIZE, 1) and info.param_names == []
    assert info.counts == {"train": 9, "val": 6, "test": 3}  # per class 3/2/1: largest remainder, ties to val
    manifest = info.manifest
    assert manifest["kind"] == "imported" and manifest["source"] == str(root.resolve())
    assert manifest["config"]["format"] == "deeplense-npy" and manifest["config"]["splits"]["train"] == 0.5
    found = records(out)
    assert set(found) == set(arrays)  # record id = path relative to SRC
    for relpath, record in found.items():
        np.testing.assert_array_equal(record["image"][..., 0], np.squeeze(arrays[relpath]))
        assert record["class_name"].decode() == relpath.split("/")[0]
        assert info.class_names[record["label"]] == relpath.split("/")[0]
    check_dataset(out)  # the converted dataset verifies


def test_multiband_layouts(tmp_path, capsys):
    chw, hwc = rng_images(1, 2, (3, SIZE, SIZE)), rng_images(2, 2, (SIZE, SIZE, 3))
    root = save_tree(tmp_path / "src", {"a/0.npy": chw[0], "a/1.npy": chw[1], "b/0.npy": hwc[0], "b/1.npy": hwc[1]})
    out = tmp_path / "ds"
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(out), "--splits", "1.0"], capsys)
    assert code == 0, err
    found = records(out)
    np.testing.assert_array_equal(found["a/0.npy"]["image"], np.moveaxis(chw[0], 0, -1))
    np.testing.assert_array_equal(found["b/1.npy"]["image"], hwc[1])
    save_tree(root, {"b/2.npy": np.zeros((8, SIZE, 8), np.float32)})
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(tmp_path / "ds2")], capsys)
    assert code == 2 and "b/2.npy" in one_line_error(err)


def axion_tree(root: Path) -> dict[str, float]:
    rng = np.random.default_rng(3)
    masses = {}
    arrays = {}
    for i in range(4):
        mass = float(10 ** rng.uniform(-24, -22))
        arrays[f"axion/ax_{i}.npy"] = np.array([rng.random((SIZE, SIZE)), mass], dtype=object)
        masses[f"axion/ax_{i}.npy"] = mass
        arrays[f"no_sub/ns_{i}.npy"] = rng.random((1, SIZE, SIZE))
    save_tree(root, arrays)
    return masses


def test_object_arrays_need_trust_pickle(tmp_path, capsys):
    root = tmp_path / "model_ii"
    masses = axion_tree(root)
    out = tmp_path / "ds"
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(out)], capsys)
    line = one_line_error(err)
    assert code == 2 and "axion/ax_0.npy" in line and "--trust-pickle" in line
    assert not list(out.glob("*.tfrecord"))

    code, stdout, err = convert(["deeplense-npy", str(root), "--out", str(out), "--trust-pickle",
                                 "--splits", "0.5,0.5"], capsys)
    assert code == 0, err
    info = open_dataset(out)
    assert info.param_names == ["m_axion", "log10_m_axion"]
    assert set(info.class_specific_params) == {"m_axion", "log10_m_axion"}
    assert info.manifest["config"]["trust_pickle"] is True
    for relpath, record in records(out).items():
        if relpath in masses:
            assert math.isclose(record["m_axion"], masses[relpath], rel_tol=1e-6)
            assert math.isclose(record["log10_m_axion"], math.log10(masses[relpath]), rel_tol=1e-6)
        else:
            assert np.isnan(record["m_axion"]) and np.isnan(record["log10_m_axion"])


@pytest.mark.parametrize("problem,name,expected", [
    ("nan", "b/2.npy", "NaN or Inf"),
    ("inf", "b/3.npy", "NaN or Inf"),
    ("shape", "b/2.npy", "differs from"),
    ("truncated", "b/3.npy", "not a readable .npy"),
    ("garbage", "b/1.npy", "not a .npy file"),
    ("four_d", "b/2.npy", "expected (H, W)"),
    ("strings", "b/2.npy", "dtype"),
])
def test_bad_files_are_named(tmp_path, capsys, problem, name, expected):
    images = {f"{c}/{i}.npy": image for c in "ab" for i, image in enumerate(rng_images(ord(c), 4, (SIZE, SIZE)))}
    root = save_tree(tmp_path / "src", images)
    path = root / name
    if problem == "nan":
        bad = images[name].copy()
        bad[3, 4] = np.nan
        np.save(path, bad)
    elif problem == "inf":
        bad = images[name].astype(np.float64)
        bad[0, 0] = 1e300  # finite in float64, infinite in float32
        np.save(path, bad)
    elif problem == "shape":
        np.save(path, np.zeros((12, 12), np.float32))
    elif problem == "truncated":
        path.write_bytes(path.read_bytes()[:-50])
    elif problem == "garbage":
        path.write_bytes(b"this is not numpy")
    elif problem == "four_d":
        np.save(path, np.zeros((2, 2, SIZE, SIZE), np.float32))
    elif problem == "strings":
        np.save(path, np.full((SIZE, SIZE), "x"))
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(tmp_path / "ds"),
                            "--records-per-shard", "2"], capsys)
    line = one_line_error(err)
    assert code == 2 and name in line and expected in line


def write_fits(path: Path, image: np.ndarray, extension: bool = False) -> None:
    from astropy.io import fits

    path.parent.mkdir(parents=True, exist_ok=True)
    if extension:
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI")]).writeto(path)
    else:
        fits.PrimaryHDU(image).writeto(path)


def test_fits_labelled_and_unlabelled(tmp_path, capsys):
    labelled = tmp_path / "cutouts"
    images = {}
    for name in ("lens", "non_lens"):
        for i, image in enumerate(rng_images(len(name), 4, (SIZE, SIZE))):
            images[f"{name}/{i}.fits"] = image.astype(">f4")  # FITS is big-endian
            write_fits(labelled / f"{name}/{i}.fits", images[f"{name}/{i}.fits"], extension=True)
    out = tmp_path / "ds_labelled"
    code, _, err = convert(["fits", str(labelled), "--out", str(out), "--splits", "0.5,0.5"], capsys)
    assert code == 0, err
    info = open_dataset(out)
    assert info.class_names == ["lens", "non_lens"] and info.manifest["config"]["format"] == "fits"
    found = records(out)
    assert set(found) == set(images)
    for relpath, record in found.items():
        np.testing.assert_array_equal(record["image"][..., 0], images[relpath])
    code, _, err = convert(["fits", str(labelled), "--out", str(tmp_path / "x"), "--hdu", "PRIMARY"], capsys)
    assert code == 2 and "lens/0.fits" in one_line_error(err)
    code, _, err = convert(["fits", str(labelled), "--out", str(tmp_path / "y"), "--hdu", "1"], capsys)
    assert code == 0, err

    unlabelled = tmp_path / "survey"
    cube = np.random.default_rng(0).random((3, SIZE, SIZE)).astype(np.float32)
    for i in range(3):
        write_fits(unlabelled / f"cut_{i}.fits", cube * (i + 1))
    out = tmp_path / "ds_unlabelled"
    code, _, err = convert(["fits", str(unlabelled), "--out", str(out), "--splits", "1.0"], capsys)
    assert code == 0, err
    info = open_dataset(out)
    assert info.class_names == [] and info.image_shape == (SIZE, SIZE, 3)
    found = records(out)
    assert {r["label"] for r in found.values()} == {-1} and {r["class_name"] for r in found.values()} == {b""}
    np.testing.assert_allclose(found["cut_1.fits"]["image"], np.moveaxis(cube * 2, 0, -1))
    check_dataset(out)

    bad = unlabelled / "cut_1.fits"
    bad.write_bytes(bad.read_bytes()[:3000])
    code, _, err = convert(["fits", str(unlabelled), "--out", str(tmp_path / "z"), "--splits", "1.0",
                            "--overwrite"], capsys)
    assert code == 2 and "cut_1.fits" in one_line_error(err)


def split_ids(directory: Path) -> dict[str, list[str]]:
    found = records(directory)
    return {s: sorted(i for i, r in found.items() if r["split"] == s) for s in ("train", "val", "test")}


def test_split_assignment_is_stratified_and_deterministic(tmp_path, capsys):
    images = {f"{c}/{i:02d}.npy": im for c in ("a", "b", "c") for i, im in enumerate(rng_images(1, 10, (SIZE, SIZE)))}
    root = save_tree(tmp_path / "src", images)
    runs = {}
    for tag, seed in (("first", 1), ("again", 1), ("other", 2)):
        out = tmp_path / tag
        code, _, err = convert(["deeplense-npy", str(root), "--out", str(out), "--splits", "0.6,0.2,0.2",
                                "--seed", str(seed), "--records-per-shard", "8"], capsys)
        assert code == 0, err
        runs[tag] = out
    manifest = open_dataset(runs["first"]).manifest
    for split, per_class in (("train", 6), ("val", 2), ("test", 2)):
        assert manifest["splits"][split]["per_class"] == {"a": per_class, "b": per_class, "c": per_class}
    assert split_ids(runs["first"]) == split_ids(runs["again"])
    assert split_ids(runs["first"]) != split_ids(runs["other"])
    shards = lambda d: {s["file"]: s["sha256"] for v in open_dataset(d).manifest["splits"].values()  # noqa: E731
                        for s in v["shards"]}
    assert shards(runs["first"]) == shards(runs["again"])


def test_rerun_resumes_without_rewriting_shards(deeplense, tmp_path, capsys):
    root, _ = deeplense
    out = tmp_path / "ds"
    argv = ["deeplense-npy", str(root), "--out", str(out), "--records-per-shard", "4"]
    assert convert(argv, capsys)[0] == 0
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tfrecord")}
    manifest = (out / "manifest.json").read_text()
    code, stdout, _ = convert(argv, capsys)
    assert code == 0 and f"kept {len(before)} complete shard(s)" in stdout and "wrote" not in stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tfrecord")} == before
    assert (out / "manifest.json").read_text() == manifest
    # A killed run leaves shards missing: the rerun writes only those.
    victim = sorted(before)[0]
    (out / victim).unlink()
    code, stdout, _ = convert(argv, capsys)
    assert code == 0 and "wrote 1 shard(s)" in stdout
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tfrecord")}
    assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}
    assert json.loads((out / "manifest.json").read_text()) == json.loads(manifest)


def test_workers_write_identical_shards(deeplense, tmp_path, capsys):
    root, _ = deeplense
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code, _, err = convert(["deeplense-npy", str(root), "--out", str(out), "--records-per-shard", "4",
                                "--workers", str(workers)], capsys)
        assert code == 0, err
        digests.append({p.name: p.read_bytes() for p in out.glob("*.tfrecord")})
    assert digests[0] == digests[1]


def deeplense_split_tree(root: Path, per_class: dict[str, int]) -> Path:
    """SRC/train/<class>/*.npy and SRC/val/<class>/*.npy as DeepLense distributes them."""
    images = {}
    for folder, n in per_class.items():
        for c in ("axion", "cdm", "no_sub"):
            for i, im in enumerate(rng_images(len(folder) + len(c), n, (SIZE, SIZE))):
                images[f"{folder}/{c}/{c}_{i:02d}.npy"] = im
    return save_tree(root, images)


def test_deeplense_split_folders_keep_membership(tmp_path, capsys):
    root = deeplense_split_tree(tmp_path / "src", {"train": 10, "val": 4})
    out = tmp_path / "ds"
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(out), "--records-per-shard", "8"], capsys)
    assert code == 0, err
    ids = split_ids(out)
    # val/ is DeepLense's held-out set: it becomes test, whole; 10% of train/ (stratified) becomes val
    assert ids["test"] == sorted(f"val/{c}/{c}_{i:02d}.npy" for c in ("axion", "cdm", "no_sub") for i in range(4))
    assert all(i.startswith("train/") for i in ids["train"] + ids["val"])
    manifest = open_dataset(out).manifest
    assert manifest["class_names"] == ["axion", "cdm", "no_sub"]
    assert manifest["splits"]["val"]["per_class"] == {"axion": 1, "cdm": 1, "no_sub": 1}
    assert manifest["splits"]["train"]["per_class"] == {"axion": 9, "cdm": 9, "no_sub": 9}
    assert manifest["config"]["split_folders"] == {"train": "train", "val": "test"}
    assert check_dataset(out).problems == []


def test_split_map_val_and_resplit(tmp_path, capsys):
    root = deeplense_split_tree(tmp_path / "src", {"train": 6, "val": 3})
    out = tmp_path / "mapped"
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(out), "--split-map", "val=val"], capsys)
    assert code == 0, err
    ids = split_ids(out)
    assert ids["test"] == [] and len(ids["val"]) == 9 and all(i.startswith("val/") for i in ids["val"])
    assert len(ids["train"]) == 18 and all(i.startswith("train/") for i in ids["train"])

    out = tmp_path / "resplit"
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(out), "--resplit", "--splits", "0.5,0.25,0.25",
                            "--seed", "3"], capsys)
    assert code == 0, err
    ids = split_ids(out)
    assert {len(v) for v in ids.values()} != {0} and sum(len(v) for v in ids.values()) == 27
    assert any(i.startswith("val/") for i in ids["train"])  # folders pooled
    # a test/ folder present: val/ stays val
    root = deeplense_split_tree(tmp_path / "three", {"train": 4, "val": 2, "test": 2})
    out = tmp_path / "three_ds"
    assert convert(["deeplense-npy", str(root), "--out", str(out)], capsys)[0] == 0
    ids = split_ids(out)
    assert all(i.startswith("val/") for i in ids["val"]) and all(i.startswith("test/") for i in ids["test"])


@pytest.mark.parametrize("layout,argv,expected", [
    ("split_and_class", [], "mixes split folders"),
    ("loose_in_split", [], "holds files directly"),
    ("classes_differ", [], "disagree on the classes"),
    ("good", ["--split-map", "dev=test"], "not a split folder"),
    ("good", ["--split-map", "val=holdout"], "one of train"),
    ("good", ["--split-map", "train=val"], "no folder maps to train"),
    ("good", ["--val-fraction", "1.5"], "--val-fraction"),
    ("flat", ["--split-map", "val=val"], "needs split folders"),
])
def test_split_folder_problems_are_one_line(tmp_path, capsys, layout, argv, expected):
    root = tmp_path / "src"
    image = np.zeros((SIZE, SIZE), np.float32)
    trees = {
        "split_and_class": {"train/a/0.npy": image, "cdm/0.npy": image},
        "loose_in_split": {"train/a/0.npy": image, "val/0.npy": image},
        "classes_differ": {"train/a/0.npy": image, "train/b/0.npy": image, "val/a/0.npy": image},
        "good": {"train/a/0.npy": image, "train/a/1.npy": image, "val/a/0.npy": image},
        "flat": {"a/0.npy": image, "b/0.npy": image},
    }
    save_tree(root, trees[layout])
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(tmp_path / "ds"), *argv], capsys)
    assert code == 2 and expected in one_line_error(err)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("layout,expected", [
    ("mixed", "both files"),
    ("empty_class", "holds no .npy files"),
    ("nothing", "holds no .npy files"),
    ("ambiguous", "--layout"),
])
def test_layout_problems(tmp_path, capsys, layout, expected):
    root = tmp_path / "src"
    image = np.zeros((SIZE, SIZE), np.float32)
    if layout == "mixed":
        save_tree(root, {"a/0.npy": image, "loose.npy": image})
    elif layout == "empty_class":
        save_tree(root, {"a/0.npy": image})
        (root / "b").mkdir()
    elif layout == "nothing":
        root.mkdir()
        (root / "notes.txt").write_text("no images")
    else:
        save_tree(root, {"a/0.npy": np.zeros((4, 4, 4), np.float32)})
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(tmp_path / "ds")], capsys)
    assert code == 2 and expected in one_line_error(err)


@pytest.mark.parametrize("splits", ["0.8,0.3", "0.5,x", "train=0.5,dev=0.5", "1,0,0,0"])
def test_bad_splits(deeplense, tmp_path, capsys, splits):
    root, _ = deeplense
    code, _, err = convert(["deeplense-npy", str(root), "--out", str(tmp_path / "ds"), "--splits", splits], capsys)
    assert code == 2 and "split" in one_line_error(err)
