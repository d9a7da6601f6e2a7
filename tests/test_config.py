import logging

import pytest
import yaml

from ssame.cli import main
from ssame.config import ParamsError, as_params, fingerprint, load_params, validate_params


@pytest.mark.parametrize("name", ["default.yaml", "paper.yaml"])
def test_shipped_params_validate(name, repo):
    params = load_params(repo / "params" / name)
    assert params["variants"]


def test_unknown_key_is_named(params):
    params["train"]["stepz"] = 3
    with pytest.raises(ParamsError, match=r"train\.stepz"):
        validate_params(params)


def test_wrong_type_is_named(params):
    params["train"]["lr"] = "fast"
    with pytest.raises(ParamsError, match=r"train\.lr"):
        validate_params(params)


def test_nested_key_is_named(params):
    params["model"]["tiny"]["vision"]["depth"] = 0
    with pytest.raises(ParamsError, match=r"model\.tiny\.vision\.depth"):
        validate_params(params)


def test_undefined_variant(params):
    params["train"]["variants"] = ["baseline", "nope"]
    with pytest.raises(ParamsError, match="nope"):
        validate_params(params)


def test_seed_systems_must_be_variants_and_apart_from_train_variants(params):
    params["train"]["seed_systems"] = ["nope"]
    with pytest.raises(ParamsError, match=r"train\.seed_systems names 'nope'"):
        validate_params(params)
    params["train"]["seed_systems"] = [params["train"]["variants"][0]]
    with pytest.raises(ParamsError, match=r"both train\.variants and train\.seed_systems"):
        validate_params(params)


def test_lora_needs_the_vision_tower_frozen(repo):
    params = load_params(repo / "params" / "paper.yaml").to_dict()
    params["train"]["freeze_vision"] = False
    with pytest.raises(ParamsError, match=r"train\.freeze_vision: true"):
        validate_params(params)


def test_unpinned_revision_rejected(repo):
    params = yaml.safe_load((repo / "params" / "paper.yaml").read_text())
    params["data"]["hub"]["eval_revision"] = "main"
    with pytest.raises(ParamsError, match=r"data\.hub\.eval_revision"):
        validate_params(params)


def test_cli_rejects_bad_params_before_running(tmp_path, params, capsys):
    params["evaluate"]["batchsize"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    ran = []
    assert main(["data", "--params", str(bad)], run=lambda *a: ran.append(a)) == 2
    assert not ran
    assert "evaluate.batchsize" in capsys.readouterr().err


def test_cli_version_and_log_level(capsys, params, tmp_path):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ssame {version('ssame')}"
    good = tmp_path / "params.yaml"
    good.write_text(yaml.safe_dump(params))
    levels = []
    main(["data", "--params", str(good), "--log-level", "warning"],
         run=lambda *a: levels.append(logging.getLogger("ssame").getEffectiveLevel()))
    assert levels == [logging.WARNING]
    with pytest.raises(SystemExit):
        main(["data", "--params", str(good), "--log-level", "LOUD"])
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err
    from ssame.logs import checked_level  # what the Snakefile applies to --config log_level

    assert checked_level("debug") == "DEBUG"
    with pytest.raises(ValueError, match="log_level=LOUD: must be one of DEBUG, INFO, WARNING, ERROR"):
        checked_level("LOUD")


def test_cli_help_for_every_stage(capsys):
    for stage in ["mirror", "data", "saliency", "train", "evaluate", "report"]:
        with pytest.raises(SystemExit) as exit_info:
            main([stage, "--help"])
        assert exit_info.value.code == 0
        assert "--params" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "kind", "processes"), [
    ("cpu", "NO", 1), ("ddp_8gpu", "MULTI_GPU", 8), ("ddp_2proc", "MULTI_GPU", 2), ("fsdp_8gpu", "FSDP", 8),
    ("zero2_8gpu", "DEEPSPEED", 8)])
def test_accelerate_configs_parse_and_say_how_to_launch(repo, name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    path = repo / "params" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind and config.num_processes == processes
    assert "accelerate launch" in path.read_text().split("\ncompute_environment")[0]


def test_paper_profile_points_at_an_existing_accelerate_config(repo):
    params = load_params(repo / "params" / "paper.yaml")
    assert (repo / params["train"]["accelerate_config"]).is_file()
    assert params["model"]["lora"] and params["train"]["grad_cache_chunk_size"]


def test_params_are_frozen_and_defaults_come_from_the_schema(repo):
    params = load_params(repo / "params" / "default.yaml")
    with pytest.raises(TypeError, match="read-only"):
        params["train"]["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        params.train.seeds.append(3)  # lists are frozen too
    raw = yaml.safe_load((repo / "params" / "default.yaml").read_text())
    raw["variants"]["ssame"].pop("attn_layers")
    raw["train"].pop("checkpoint_every")
    filled = as_params(raw)
    assert filled["variants"]["ssame"]["attn_layers"] == [-1]
    assert filled["train"]["checkpoint_every"] is None
    assert filled["data"]["hub"] is None and filled["model"]["lora"] is None


def test_every_optional_key_has_one_schema_default():
    """Each property the schema does not require carries a `default:` (the one place defaults are written), so
    code never needs `.get(key, fallback)`."""
    from ssame.config import schema

    missing = []

    def walk(node, path):
        node = node if "$ref" not in node else schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        required = set(node.get("required", []))
        for key, sub in node.get("properties", {}).items():
            target = sub if "$ref" not in sub else schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
            if key not in required and "default" not in sub and "default" not in target:
                missing.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}*.")

    walk(schema(), "")
    assert not missing, f"optional keys without a schema default: {missing}"


def test_hard_negatives_cannot_be_left_out_silently(params):
    params["train"].pop("hard_negatives")
    with pytest.raises(ParamsError, match="hard_negatives"):
        validate_params(params)


def test_dead_profile_key_is_rejected(params):
    params["profile"] = "paper"
    with pytest.raises(ParamsError, match="profile"):
        validate_params(params)


def test_fingerprint_follows_the_values(params):
    base = as_params(params)
    params["evaluate"]["batch_size"] = 7
    changed = as_params(params)
    assert fingerprint(base["train"]) == fingerprint(changed["train"]) == fingerprint(changed.to_dict()["train"])
    assert fingerprint(base) != fingerprint(changed)


def test_params_pickle_for_worker_processes(repo):
    import pickle

    params = load_params(repo / "params" / "paper.yaml")
    assert pickle.loads(pickle.dumps(params)) == params
    hub = params["data"]["hub"]
    assert pickle.loads(pickle.dumps(hub))["train_datasets"] == hub["train_datasets"]
