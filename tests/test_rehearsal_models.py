"""The rehearsal's tiny models: layout, determinism, Qwen2-VL geometry, and the paper path loading them by hub id at
paper.yaml's pinned revisions from an offline hub cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from ssame.config import load_params
from ssame.rehearsal.models import HUB_IDS, write_tiny_models


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("models"), seed=0)


def test_layout_determinism_and_size(models, tmp_path):
    root = models["backbone"].parents[1]
    assert {key: str(folder.relative_to(root)) for key, folder in models.items()} == HUB_IDS
    again, other = write_tiny_models(tmp_path / "again", seed=0), write_tiny_models(tmp_path / "other", seed=1)
    assert _digests(root) == _digests(again["backbone"].parents[1])
    differing = {k for k, v in _digests(other["backbone"].parents[1]).items() if _digests(root)[k] != v}
    assert {str(Path(HUB_IDS[key]) / "model.safetensors") for key in HUB_IDS} <= differing
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 5 * 2**20


def test_qwen2_vl_geometry_and_tokens(models):
    for key in ("backbone", "lmm"):
        config = AutoConfig.from_pretrained(models[key])
        vision = config.vision_config
        assert config.architectures == ["Qwen2VLForConditionalGeneration"]
        assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
        processor = json.loads((models[key] / "preprocessor_config.json").read_text())
        assert (processor["patch_size"], processor["merge_size"], processor["temporal_patch_size"]) == (14, 2, 2)
        tokenizer = AutoTokenizer.from_pretrained(models[key])
        assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
        assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert config.text_config.vocab_size == len(tokenizer)
    # as the real repositories: the 2B ties input and output embeddings, the 7B does not
    tied = {key: AutoConfig.from_pretrained(models[key]).tie_word_embeddings for key in ("backbone", "lmm")}
    assert tied == {"backbone": True, "lmm": False}


def _paper_revisions(params) -> dict[str, tuple[str, str]]:
    experts = params["saliency"]["expert_args"]
    return {"backbone": (params["model"]["backbone"], params["model"]["revision"]),
            "lmm": (params["saliency"]["subjects"]["model"], params["saliency"]["subjects"]["revision"]),
            "grounding_dino": (experts["grounding_dino"]["model"], experts["grounding_dino"]["revision"]),
            "owlv2": (experts["owlv2"]["model"], experts["owlv2"]["revision"]),
            "sam": (experts["grounding_dino"]["sam"]["model"], experts["grounding_dino"]["sam"]["revision"])}


SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoConfig
from ssame.config import load_params
from ssame.model.backbone import load_backbone
from ssame.saliency.experts import build_expert, expert_kwargs
from ssame.saliency.subjects import build_subjects

params = load_params(sys.argv[1])
cfg = params["saliency"]
image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
maps = {name: build_expert(name, **expert_kwargs(cfg, name))([image], [["red circle"]])[0].shape
        for name in cfg["relevance"]}
phrases = build_subjects(cfg["subjects"], None)(["What is the red circle?"])
model, tokenizer, processor = load_backbone(params, None)
try:
    AutoConfig.from_pretrained(params["model"]["backbone"])  # no revision: the cache's main is broken
    unpinned = "loaded"
except Exception as err:
    unpinned = type(err).__name__
print(json.dumps({"maps": {k: list(v) for k, v in maps.items()}, "phrases": phrases, "unpinned": unpinned,
                  "backbone": type(model).__name__, "dtype": str(model.dtype)}))
"""


def test_paper_path_loads_every_model_at_its_pinned_revision(models, repo, tmp_path):
    """paper.yaml unchanged (device auto, so on a CPU-only machine too), against an offline hub cache where each
    paper model id holds the tiny model at paper.yaml's revision and a broken snapshot at `main`: every loader of
    the paper path (backbone, subject LMM, Grounding DINO + SAM, OWLv2) must pass `revision=` to get the former."""
    params = load_params(repo / "params" / "paper.yaml")
    pinned = _paper_revisions(params)
    assert {key: hub_id for key, (hub_id, _) in pinned.items()} == HUB_IDS  # the mirror's layout = paper ids
    cache = tmp_path / "hub"
    broken = "f" * 40
    for key, (hub_id, revision) in pinned.items():
        repo_dir = cache / f"models--{hub_id.replace('/', '--')}"
        shutil.copytree(models[key], repo_dir / "snapshots" / revision)
        (repo_dir / "snapshots" / broken).mkdir(parents=True)
        for name in os.listdir(models[key]):
            (repo_dir / "snapshots" / broken / name).write_text("{not json")
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(broken)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(repo / "params" / "paper.yaml")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["maps"] == {"grounding_dino": [40, 60], "owlv2": [40, 60]}
    assert isinstance(result["phrases"], list) and len(result["phrases"]) == 1
    assert result["backbone"] == "Qwen2VLForConditionalGeneration" and result["dtype"] == "torch.bfloat16"
    assert result["unpinned"] != "loaded"  # the control: without the revision the broken main is what loads
