import json

import numpy as np
import pytest

from ssame.saliency.experts import EXPERTS, read_image, saliency_map
from ssame.saliency.store import SaliencyStore, write_shard
from ssame.saliency.subjects import LexiconSubjects


@pytest.mark.parametrize("expert", sorted(EXPERTS))
def test_expert_maps_normalised_and_find_the_object(expert, image_dir):
    sal = saliency_map(read_image(image_dir / "img0.png"), expert, 32)
    assert sal.shape == (32, 32) and sal.dtype == np.float32
    assert sal.min() == 0.0 and sal.max() == 1.0
    inside = sal[3:12, 6:12].mean()  # the red square covers rows 16-32, cols 24-40 of 96
    assert inside > 2 * sal[16:, 16:].mean()


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


def test_store_roundtrip_and_grid_resize(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    sal = np.zeros((8, 8), dtype=np.float32)
    sal[:4, :4] = 1.0
    write_shard(shards / "A.npz", {"x/a.png": sal})
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["A"]}))
    store = SaliencyStore(tmp_path)
    assert "x/a.png" in store
    np.testing.assert_array_equal(store.map("x/a.png"), sal)
    np.testing.assert_allclose(store.map("x/a.png", (2, 2)), [[1, 0], [0, 0]])
    with pytest.raises(KeyError, match=r"nope\.png"):
        store.map("nope.png")
