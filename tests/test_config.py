import pytest
import yaml

from ssame.cli import main
from ssame.config import ParamsError, load_params, validate_params


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


def test_cli_help_for_every_stage(capsys):
    for stage in ["data", "saliency", "train", "evaluate", "report"]:
        with pytest.raises(SystemExit) as exit_info:
            main([stage, "--help"])
        assert exit_info.value.code == 0
        assert "--params" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "kind", "processes"), [
    ("cpu", "NO", 1), ("ddp_8gpu", "MULTI_GPU", 8), ("fsdp_8gpu", "FSDP", 8), ("zero2_8gpu", "DEEPSPEED", 8)])
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
