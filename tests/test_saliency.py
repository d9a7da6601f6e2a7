import json

import numpy as np
import pytest

from ssame.saliency.colour import ColourTerms
from ssame.saliency.experts import EXPERTS, build_expert, normalise, read_image
from ssame.saliency.fusion import Fusion, fuse
from ssame.saliency.quality import auc, iou_top, pointing
from ssame.saliency.store import SaliencyStore, write_shard, write_subjects
from ssame.saliency.subjects import LexiconSubjects

SQUARE = (slice(16, 32), slice(24, 40))  # where conftest's image_dir draws the red square in img0.png


def _mask() -> np.ndarray:
    mask = np.zeros((96, 96), dtype=bool)
    mask[SQUARE] = True
    return mask


@pytest.mark.parametrize(("name", "min_auc"), [("spectral_residual", 0.55), ("fine_grained", 0.7)])
def test_bottom_up_experts_find_the_object(name, min_auc, image_dir):
    (sal,) = build_expert(name)([read_image(image_dir / "img0.png")], [[]])
    assert sal.shape == (96, 96) and sal.dtype == np.float32
    assert sal.min() == 0.0 and sal.max() == 1.0
    assert auc(sal, _mask()) > min_auc


def test_registry_names_unknown_expert():
    assert {"spectral_residual", "fine_grained", "colour_terms", "center_bias", "uniform"} <= set(EXPERTS)
    with pytest.raises(KeyError, match="nope"):
        build_expert("nope")


def test_colour_terms_follow_the_phrase(image_dir):
    image = read_image(image_dir / "img0.png")
    expert = ColourTerms()
    red, blue, none = expert([image] * 3, [["red square"], ["blue square"], ["square"]])
    assert auc(red, _mask()) > 0.99
    assert red[SQUARE].mean() > 0.6 > 0.1 > red[60:, 60:].mean()
    assert blue[SQUARE].mean() < 0.1
    assert not none.any()


def test_fusion_falls_back_to_bottom_up_and_checks_experts(image_dir):
    bottom = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    assert fuse(bottom, None, 0.1) is bottom
    assert fuse(bottom, np.zeros((8, 8)), 0.1) is bottom
    relevance = np.zeros((8, 8), dtype=np.float32)
    relevance[2:4, 2:4] = 1.0
    fused = fuse(bottom, relevance, 0.1)
    assert fused.max() == 1.0 and not fused[relevance == 0].any()
    with pytest.raises(ValueError, match="not phrase-conditioned"):
        Fusion(build_expert("fine_grained"), [build_expert("uniform")], 0.1)
    fusion = Fusion(build_expert("fine_grained"), [ColourTerms()], 0.1)
    image = read_image(image_dir / "img0.png")
    with_phrase, without = fusion([image, image], [["red square"], []])
    assert auc(with_phrase, _mask()) > 0.99
    np.testing.assert_array_equal(without, build_expert("fine_grained")([image], [[]])[0])


def test_quality_metrics_on_known_maps():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:2] = True  # the top 20 %
    perfect = mask.astype(np.float32)
    assert auc(perfect, mask) == 1.0 and auc(1 - perfect, mask) == 0.0
    assert auc(np.ones((10, 10)), mask) == 0.5
    assert iou_top(perfect, mask, 0.2) == 1.0 and iou_top(perfect, mask, 0.1) == 0.5
    assert pointing(perfect, mask) == 1.0 and pointing(1 - perfect, mask) == 0.0
    assert auc(np.kron(perfect, np.ones((2, 2))), np.kron(mask, np.ones((2, 2), dtype=bool))) == 1.0
    with pytest.raises(ValueError, match="both subject and background"):
        auc(perfect, np.ones((10, 10), dtype=bool))


def test_normalise_constant_map_is_uniform():
    assert (normalise(np.full((3, 3), 7.0)) == 1.0).all()


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"bad\.png"):
        read_image(bad)
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        read_image(tmp_path / "gone.png")


def test_lexicon_subjects(tmp_path):
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps({"colours": ["red", "blue"], "sizes": ["large"], "shapes": ["circle", "square"]}))
    subjects = LexiconSubjects(path)
    assert subjects("<|image_1|> Is the large red circle left of the blue square?") == [
        "large red circle", "blue square"]
    assert subjects("a red thing") == []
    with pytest.raises(FileNotFoundError, match="lexicon"):
        LexiconSubjects(tmp_path / "none.json")


def test_store_pairs_override_image_maps_and_resize(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    image_map = np.zeros((8, 8), dtype=np.float32)
    image_map[:4, :4] = 1.0
    pair_map = 1.0 - image_map
    key = ("the red circle", "x/a.png")
    write_shard(shards, "A", {"x/a.png": image_map}, {key: pair_map}, 8, {key: "red circle"})
    write_subjects(shards / "A.subjects.jsonl", [("the red circle", "x/a.png", ["red circle", "circle"]),
                                                 ("other text", "x/a.png", [])])
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["A"]}))
    store = SaliencyStore(tmp_path)
    assert store.subject("the red circle", "x/a.png") == "red circle"
    assert store.subject("other text", "x/a.png") is None
    assert "x/a.png" in store and "x/b.png" not in store
    np.testing.assert_array_equal(store.map("x/a.png"), image_map)
    np.testing.assert_array_equal(store.map("x/a.png", text="other text"), image_map)
    np.testing.assert_array_equal(store.map("x/a.png", text="the red circle"), pair_map)
    np.testing.assert_allclose(store.map("x/a.png", (2, 2)), [[1, 0], [0, 0]])
    with pytest.raises(KeyError, match=r"nope\.png"):
        store.map("nope.png")


def test_store_later_shard_wins_and_every_key_is_found(tmp_path):
    shards = tmp_path / "shards"
    rng = np.random.default_rng(0)
    first = {f"d/{i}.png": rng.random((4, 4)).astype(np.float16) for i in range(300)}
    pairs = {(f"text {i} \u00e9", f"d/{i}.png"): rng.random((4, 4)).astype(np.float16) for i in range(0, 300, 7)}
    write_shard(shards, "A", first, pairs, 4, {k: f"subject {k[0]}" for k in pairs})
    write_shard(shards, "B", {"d/0.png": np.ones((4, 4))}, {}, 4, {})
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["A", "B"]}))
    store = SaliencyStore(tmp_path)
    np.testing.assert_array_equal(store.map("d/0.png"), np.ones((4, 4)))
    for path, sal in list(first.items())[1:]:
        np.testing.assert_array_equal(store.map(path), sal.astype(np.float32))
    for (text, image), sal in pairs.items():
        assert store.subject(text, image) == f"subject {text}"
        np.testing.assert_array_equal(store.map(image, text=text), sal.astype(np.float32))
    assert store.subject("text 1 \u00e9", "d/1.png") is None


def test_store_reads_only_the_maps_it_is_asked_for(tmp_path):
    """Opening the store and reading a few maps allocates a few maps, not the shards (4,000 maps, 8 MB here)."""
    import tracemalloc

    maps = {f"d/{i}.png": np.full((32, 32), i % 7 / 7) for i in range(4000)}
    write_shard(tmp_path / "shards", "A", maps, {}, 32, {})
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["A"]}))
    tracemalloc.start()
    try:
        store = SaliencyStore(tmp_path)
        read = [store.map(f"d/{i}.png", (4, 4)) for i in range(0, 4000, 1000)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(read) == 4 and peak < 512 * 1024, f"peak {peak / 2**20:.1f} MiB while reading 4 maps"


def test_empty_shard_loads(tmp_path):
    write_shard(tmp_path / "shards", "T", {}, {}, 8, {})
    write_subjects(tmp_path / "shards" / "T.subjects.jsonl", [])
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["T"]}))
    assert "any.png" not in SaliencyStore(tmp_path)
    assert SaliencyStore(tmp_path).subject("a", "any.png") is None


def test_store_names_a_missing_or_incomplete_shard(tmp_path):
    (tmp_path / "shards" / "T").mkdir(parents=True)  # a shard whose writer died before shard.json
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["T"]}))
    with pytest.raises(FileNotFoundError, match=r"shards/T"):
        SaliencyStore(tmp_path)


def test_write_shard_needs_a_subject_for_every_pair_map(tmp_path):
    with pytest.raises(ValueError, match="no subject phrase"):
        write_shard(tmp_path, "T", {}, {("a", "b.png"): np.zeros((4, 4))}, 4, {})
