"""Tests for featcache.inputs.sources: directories, manifests, .npz inputs and --shard splits."""

import re

import numpy as np
import pytest
from PIL import Image

from featcache.exceptions import FeatcacheError
from featcache.inputs.sources import collect_inputs, parse_shard, shard_positions


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def test_directory_with_class_folders_gives_labels(tmp_path):
    for name in ["normal/a.png", "normal/sub/b.png", "pneumonia/c.PNG"]:
        _png(tmp_path / "data" / name)
    (tmp_path / "data" / "normal" / "notes.txt").write_text("not an image")
    found = collect_inputs([tmp_path / "data"])
    assert [p.name for p in found.items] == ["a.png", "b.png", "c.PNG"]
    assert found.labels == ["normal", "normal", "pneumonia"]


def test_flat_directory_has_no_labels(tmp_path):
    _png(tmp_path / "flat" / "a.png")
    _png(tmp_path / "flat" / "cls" / "b.png")
    assert collect_inputs([tmp_path / "flat"]).labels == [None, None]


def test_csv_manifest_resolves_relative_paths_and_keeps_labels_groups_splits(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_path,diagnosis,patient_id,split\nimgs/a.png,1,p7,train\n"
                        f"{tmp_path / 'imgs' / 'b.png'},0,p8,val\n")
    found = collect_inputs([manifest], label_column="diagnosis")
    assert found.items == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png"]
    assert found.labels == ["1", "0"] and found.groups == ["p7", "p8"]
    assert found.splits == ["train", "val"]


def test_parquet_manifest(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    _png(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png"], "label": ["x"]}).to_parquet(tmp_path / "m.parquet")
    found = collect_inputs([tmp_path / "m.parquet"])
    assert found.items == [tmp_path / "a.png"] and found.labels == ["x"]


def test_manifest_without_path_column_names_its_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file_name,label\na.png,1\n")
    with pytest.raises(FeatcacheError, match=r"no path column .*file_name.*--path-column"):
        collect_inputs([manifest])
    with pytest.raises(FeatcacheError, match="no path column 'img'"):
        collect_inputs([manifest], path_column="img")


def test_npz_in_medmnist_layout_gives_arrays_labels_and_splits(tmp_path):
    np.savez(tmp_path / "d.npz", train_images=np.zeros((3, 8, 8), np.uint8),
             train_labels=np.array([[0], [1], [1]]), val_images=np.ones((2, 8, 8), np.uint8))
    found = collect_inputs([tmp_path / "d.npz"])
    assert len(found) == 5 and found.items[0].shape == (8, 8)
    assert found.splits == ["train"] * 3 + ["val"] * 2
    assert found.labels == ["0", "1", "1", None, None]
    assert found.sources[3] == "d.npz:val_images[0]"
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(FeatcacheError, match="MedMNIST layout"):
        collect_inputs([tmp_path / "bad.npz"])


def test_missing_input_and_nothing_found(tmp_path):
    with pytest.raises(FeatcacheError, match="does not exist"):
        collect_inputs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatcacheError, match="no images found"):
        collect_inputs([tmp_path / "empty"])


def test_shards_partition_the_inputs_deterministically():
    sources = [f"/data/img_{i}.png" for i in range(1000)]
    parts = [shard_positions(sources, i, 3) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    assert min(len(p) for p in parts) > 250
    reordered = sources[::-1]
    again = {reordered[p] for p in shard_positions(reordered, 1, 3)}
    assert again == {sources[p] for p in parts[1]}


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shard_specs(text):
    with pytest.raises(FeatcacheError, match="--shard"):
        parse_shard(text)
    assert parse_shard("2/4") == (2, 4)


def test_npz_that_is_not_images_is_a_named_error(tmp_path):
    cases = {"pickled": dict(images=np.array([None, 1], dtype=object)),
             "flat": dict(images=np.zeros(5)),
             "labels": dict(images=np.zeros((3, 8, 8)), labels=np.zeros(2))}
    for name, arrays in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    for name, words in (("pickled", "pickled objects"), ("flat", "has shape (5,)"),
                        ("labels", "2 entries for 3 images"), ("garbage", "cannot read")):
        with pytest.raises(FeatcacheError, match=re.escape(words)):
            collect_inputs([tmp_path / f"{name}.npz"])
