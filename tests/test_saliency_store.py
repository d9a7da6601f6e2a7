"""SaliencyStore's merged index: the later-shard rule, collisions, misses and pickling over several shards."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ssame.saliency import store as store_module
from ssame.saliency.store import SaliencyStore, write_shard


def _full(value: float) -> np.ndarray:
    return np.full((4, 4), value, dtype=np.float32)


def _three_shards(root: Path) -> None:
    """A, B, C in manifest order: d/0.png in A and C, d/1.png in A and B, the pair ('t', d/0.png) in A and C."""
    pair = ("t", "d/0.png")
    write_shard(root / "shards", "A", {f"d/{i}.png": _full(i / 100) for i in range(50)},
                {pair: _full(0.5), ("u", "d/2.png"): _full(0.25)}, 4, {pair: "from A", ("u", "d/2.png"): "u in A"})
    write_shard(root / "shards", "B", {"d/1.png": _full(0.75), "b/only.png": _full(0.125)}, {}, 4, {})
    write_shard(root / "shards", "C", {"d/0.png": _full(1.0)}, {pair: _full(0.875)}, 4, {pair: "from C"})
    (root / "manifest.json").write_text(json.dumps({"shards": ["A", "B", "C"]}))


def _check(store: SaliencyStore) -> None:
    np.testing.assert_array_equal(store.map("d/0.png"), _full(1.0))  # C over A
    np.testing.assert_array_equal(store.map("d/1.png"), _full(0.75))  # B over A
    np.testing.assert_array_equal(store.map("b/only.png"), _full(0.125))
    for i in range(2, 50):
        np.testing.assert_array_equal(store.map(f"d/{i}.png"), _full(np.float16(i / 100)))
    assert store.subject("t", "d/0.png") == "from C"
    np.testing.assert_array_equal(store.map("d/0.png", text="t"), _full(0.875))
    assert store.subject("u", "d/2.png") == "u in A" and store.subject("t", "d/1.png") is None
    np.testing.assert_array_equal(store.map("d/1.png", text="t"), _full(0.75))  # no such pair: the image's map
    assert "d/49.png" in store and "d/50.png" not in store and "t" not in store
    with pytest.raises(KeyError, match=r"no saliency map for image 'd/50\.png'"):
        store.map("d/50.png", text="t")


@pytest.mark.parametrize("collide", [False, True], ids=["blake2b", "colliding_hash"])
def test_later_shard_wins_and_misses_raise_with_the_merged_index(tmp_path, monkeypatch, collide):
    """With a hash that maps every key to one of 3 values, every lookup walks colliding entries of several shards
    and must still confirm the key's bytes and take the later shard's entry."""
    if collide:
        monkeypatch.setattr(store_module, "_hash", lambda key: np.uint64(len(key) % 3))
    _three_shards(tmp_path)
    _check(SaliencyStore(tmp_path))


def test_pickled_store_rebuilds_its_index(tmp_path):
    _three_shards(tmp_path)
    store = SaliencyStore(tmp_path)
    _check(store)
    assert set(store._merged) == {"images", "pairs"}
    copy = pickle.loads(pickle.dumps(store))
    assert copy._merged == {} and all(t._open is None for t in copy._images + copy._pairs)
    _check(copy)


def test_a_store_of_empty_shards_misses(tmp_path):
    write_shard(tmp_path / "shards", "E", {}, {}, 4, {})
    write_shard(tmp_path / "shards", "F", {}, {}, 4, {})
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["E", "F"]}))
    store = SaliencyStore(tmp_path)
    assert "a.png" not in store and store.subject("t", "a.png") is None
    with pytest.raises(KeyError, match=r"a\.png"):
        store.map("a.png")
