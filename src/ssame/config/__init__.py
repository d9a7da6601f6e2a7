"""Params: load a YAML file, validate it against the schema, resolve the paths every stage shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class ParamsError(ValueError):
    """Params that do not match the schema or contradict each other."""


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts += extra[:1]
    return ".".join(parts) or "<root>"


def validate_params(params: dict[str, Any], source: str = "params") -> None:
    """Raise ParamsError naming the first offending key (schema, then cross-field checks)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        raise ParamsError(f"{source}: invalid key '{_key_path(err)}': {err.message}")
    data, train = params["data"], params["train"]
    if data["source"] not in data:
        raise ParamsError(f"{source}: data.source is '{data['source']}' but key 'data.{data['source']}' is missing")
    for variant in train["variants"]:
        if variant not in params["variants"]:
            raise ParamsError(f"{source}: train.variants names '{variant}', which is not a key of 'variants'")
    if params["model"]["backbone"] == "tiny":
        if "tiny" not in params["model"]:
            raise ParamsError(f"{source}: model.backbone is 'tiny' but key 'model.tiny' is missing")
        if data.get("tokenizer") is None:
            raise ParamsError(f"{source}: model.backbone 'tiny' needs 'data.tokenizer' (a tokenizer trained offline)")


def variant_uses_saliency(variant: dict[str, Any]) -> bool:
    """Whether training a variant reads the saliency stage's output (regeneration, attention or subject terms);
    the workflow makes only those jobs wait for that stage."""
    return bool(variant["feature_regen"] or variant["attn_loss_weight"] > 0
                or variant.get("subject_loss_weight", 0) > 0)


def load_params(path: str | Path) -> dict[str, Any]:
    """Read and validate a params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    validate_params(params, source=str(path))
    return params


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, derived from params (the only place these layouts are spelled out)."""

    results: Path
    reports: Path

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Paths:
        # validated params always carry reports_dir; stages that only write results may be given less
        return cls(Path(params["results_dir"]), Path(params.get("reports_dir", "reports")))

    @property
    def data(self) -> Path:
        return self.results / "data"

    @property
    def saliency(self) -> Path:
        return self.results / "saliency"

    def run(self, variant: str, seed: int) -> str:
        return f"{variant}/seed{seed}"

    def model(self, variant: str, seed: int) -> Path:
        return self.results / "train" / self.run(variant, seed) / "model"

    def train_metrics(self, variant: str, seed: int) -> Path:
        return self.results / "train" / self.run(variant, seed) / "metrics.json"

    def checkpoints(self, variant: str, seed: int) -> Path:
        """Resumable training state; deliberately not a Snakemake output (Snakemake clears outputs of failed jobs)."""
        return self.results / "checkpoints" / self.run(variant, seed)

    def eval(self, variant: str, seed: int) -> Path:
        return self.results / "eval" / self.run(variant, seed)
