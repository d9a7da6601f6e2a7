"""Params: one frozen, schema-validated config object, with every default taken from the schema.

`load_params(path)` (a YAML file) and `as_params(mapping)` validate against `params.schema.yaml` (JSON Schema,
unknown keys rejected), fill each absent key that has a `default:` there (the only place a default is written),
run the cross-field checks and return a `Params`: a read-only mapping whose sections and lists are read-only too.
Stage entry points call `as_params`, so callers may pass either a `Params` or a plain dict.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
_NO_DEFAULT = object()


class ParamsError(ValueError):
    """Params that do not match the schema or contradict each other."""


class Frozen(Mapping):
    """A read-only mapping (nested mappings frozen, lists frozen too); `section.key` reads like `section["key"]`."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", {k: _freeze(v) for k, v in data.items()})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):  # pickle/copy probe dunders before `_data` exists
            raise AttributeError(key)
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __reduce__(self) -> tuple:
        """Pickled as the plain data (worker processes get the same read-only params)."""
        return (type(self), (self.to_dict(),))

    def __setattr__(self, key: str, value: Any) -> None:
        raise TypeError(f"params are read-only (tried to set {key!r}); build new ones with as_params()")

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"

    def __deepcopy__(self, memo: dict) -> dict[str, Any]:
        """A deep copy is a mutable dict (tests and benches derive modified params from it)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A mutable deep copy (dicts and lists)."""
        return {k: _thaw(v) for k, v in self._data.items()}


class FrozenList(list):
    """A read-only list: still a `list` for pandas, JSON and equality, but every mutation raises."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("params are read-only (a list of params cannot change); build new ones with as_params()")

    append = extend = insert = remove = pop = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only

    def __reduce__(self) -> tuple:
        return (type(self), (list(self),))

    def __deepcopy__(self, memo: dict) -> list[Any]:
        return _thaw(self)


class Params(Frozen):
    """Validated params of one profile (see `workflow/schemas/params.schema.yaml`)."""

    __slots__ = ()


def fingerprint(data: Mapping[str, Any]) -> str:
    """sha256 of params (or any part of them) as canonical JSON: equal exactly when the values are equal."""
    return hashlib.sha256(json.dumps(_thaw(data), sort_keys=True).encode()).hexdigest()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value if isinstance(value, Frozen) else Frozen(value)
    if isinstance(value, list | tuple):
        return value if isinstance(value, FrozenList) else FrozenList(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


@cache
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":  # YAML keys may be numbers too (`1: x`)
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)
        parts += [str(k) for k in extra[:1]]
    return ".".join(parts) or "<root>"


# JSON Schema counts 150.0 as an integer; params do not (range(150.0) fails, and the fingerprint would differ)
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)),
)


def _check_finite(value: Any, source: str, key: str = "") -> None:
    """Raise naming the first NaN or infinite number (YAML `.nan`, `.inf`), which every schema bound lets pass."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{source}: invalid key '{key or '<root>'}': {value} is not a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _check_finite(v, source, f"{key}.{k}" if key else str(k))


def _first_error(validator: jsonschema.Validator, instance: Any) -> jsonschema.ValidationError | None:
    """The error to report: one of the instance itself before one an `if:` implies (`relevance: x`, not a list,
    makes `contains` vacuously true and would blame expert_args), then by key path (keys may be numbers in YAML)."""
    def rank(e: jsonschema.ValidationError) -> tuple[bool, list[str]]:
        return "then" in e.schema_path or "else" in e.schema_path, [str(p) for p in e.path]

    return min(validator.iter_errors(instance), key=rank, default=None)


def _check_schema(params: dict[str, Any], source: str) -> None:
    err = _first_error(_Validator(schema()), params)
    if err:
        raise ParamsError(f"{source}: invalid key '{_key_path(err)}': {err.message}")


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema()["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def _fill_defaults(node: dict[str, Any], value: Any) -> None:
    """Set every absent property that has a schema default, recursively (in place)."""
    node = _resolve(node)
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key, sub in props.items():
            default = sub["default"] if "default" in sub else _resolve(sub).get("default", _NO_DEFAULT)
            sub = _resolve(sub)
            if key not in value and default is not _NO_DEFAULT:
                value[key] = copy.deepcopy(default)
            if key in value:
                _fill_defaults(sub, value[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(props):
                _fill_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _fill_defaults(node["items"], item)


def _check_cross_fields(params: dict[str, Any], source: str) -> None:
    """What one JSON Schema cannot say: keys that must name other keys."""
    data, train = params["data"], params["train"]
    if data[data["source"]] is None:
        raise ParamsError(f"{source}: data.source is '{data['source']}' but key 'data.{data['source']}' is missing")
    for key in ("variants", "seed_systems"):
        for variant in train[key]:
            if variant not in params["variants"]:
                raise ParamsError(f"{source}: train.{key} names '{variant}', which is not a key of 'variants'")
    if both := sorted(set(train["variants"]) & set(train["seed_systems"])):
        raise ParamsError(f"{source}: {both} are in both train.variants and train.seed_systems")
    for rule, job in params["resources"].items():
        if not isinstance(job, dict):
            continue
        if job["nodes"] > 1 and rule != "train":
            raise ParamsError(f"{source}: resources.{rule}.nodes is {job['nodes']}; only train runs on several nodes")
        if job["gpu"] > 1 and rule not in LAUNCHED_RULES:
            raise ParamsError(f"{source}: resources.{rule}.gpu is {job['gpu']}; only train and evaluate use more "
                              "than one GPU")
        if job["threads"] is None and rule not in LAUNCHED_RULES:
            raise ParamsError(f"{source}: resources.{rule}.threads is null; give a number of cores")
    mined = [name for name in all_variants(params) if params["variants"][name]["mined_negatives"] != "none"]
    if mined and params["mine"] is None:
        raise ParamsError(f"{source}: variants {mined} train on mined negatives but key 'mine' is missing")
    if mined and params["mine"]["miner"] not in train["variants"]:
        raise ParamsError(f"{source}: mine.miner '{params['mine']['miner']}' is not in train.variants (its model of "
                          "each seed mines that seed's negatives)")
    if mined and params["variants"][params["mine"]["miner"]]["mined_negatives"] != "none":
        raise ParamsError(f"{source}: mine.miner '{params['mine']['miner']}' cannot itself train on mined negatives")
    if params["model"]["image_features"] == "cached" and not train["freeze_vision"]:
        raise ParamsError(f"{source}: model.image_features 'cached' computes each image's features once with the "
                          "tower training starts from, so that tower must stay frozen: key 'freeze_vision' of train "
                          "must be true (or set model.image_features: pixels)")
    if (params["model"]["image_features"] == "cached" and params["model"]["backbone"] == "tiny"
            and params["pretrain"]["steps"] == 0):
        raise ParamsError(f"{source}: model.image_features 'cached' needs one tower for every job, but with key "
                          "'steps' of pretrain at 0 the tiny backbone starts each seed from its own random init; set "
                          "model.image_features: pixels or pretrain.steps > 0")
    if params["model"]["lora"] and not train["freeze_vision"]:
        raise ParamsError(f"{source}: model.lora adapts the language model only and leaves the vision tower frozen; "
                          "set train.freeze_vision: true to say so")
    isolated = [name for name, v in params["variants"].items() if v.get("fusion") == "isolated"]
    if isolated and params["model"]["attn_implementation"] == "flash_attention_2":
        raise ParamsError(f"{source}: variants {isolated} use fusion 'isolated' (a 4-D attention mask), which "
                          "flash_attention_2 cannot take; set model.attn_implementation to sdpa or eager")
    if params["model"]["backbone"] == "tiny":
        if params["model"]["tiny"] is None:
            raise ParamsError(f"{source}: model.backbone is 'tiny' but key 'model.tiny' is missing")
        if data["tokenizer"] is None:
            raise ParamsError(f"{source}: model.backbone 'tiny' needs 'data.tokenizer' (a tokenizer trained offline)")


def as_params(params: Mapping[str, Any], source: str = "params") -> Params:
    """Validate `params`, fill the schema's defaults and freeze; a `Params` is returned as it is."""
    if isinstance(params, Params):
        return params
    if not isinstance(params, Mapping):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(params).__name__}")
    raw = _thaw(params)
    _check_schema(raw, source)
    _check_finite(raw, source)
    _fill_defaults(schema(), raw)
    _check_schema(raw, source)
    _check_cross_fields(raw, source)
    return Params(raw)


def validate_params(params: Mapping[str, Any], source: str = "params") -> None:
    """Raise ParamsError naming the first offending key (schema, then cross-field checks)."""
    as_params(params, source)


def as_variant(variant: Mapping[str, Any], source: str = "variant") -> Frozen:
    """One `variants:` entry validated against the schema's variant definition, defaults filled, frozen."""
    raw = _thaw(variant)
    node = schema()["$defs"]["variant"]
    err = _first_error(_Validator(node), raw)
    if err:
        raise ParamsError(f"{source}: invalid key '{_key_path(err)}': {err.message}")
    _fill_defaults(node, raw)
    return Frozen(raw)


def variant_mines(variant: Mapping[str, Any]) -> bool:
    """Whether a variant trains on the mine stage's negatives (UniME-V2)."""
    return as_variant(variant)["mined_negatives"] != "none"


def all_variants(params: Mapping[str, Any]) -> list[str]:
    """Every variant the workflow can train: `train.variants`, then `train.seed_systems`."""
    return [*params["train"]["variants"], *params["train"]["seed_systems"]]


def reported_variants(params: Mapping[str, Any], seed_systems: bool) -> list[str]:
    """The variants of a report: `train.variants` (target `all`), with `train.seed_systems` for their own target."""
    return all_variants(params) if seed_systems else list(params["train"]["variants"])


def variant_labels(params: Mapping[str, Any]) -> dict[str, str]:
    """How tables and plots name each variant: a UniME-V2 variant whose negatives the offline attribute judge
    scored says so."""
    mine = params["mine"]
    offline = mine is not None and mine["judge"]["backend"] == "attributes"
    return {v: f"{v} (attribute judge)" if offline and variant_mines(params["variants"][v]) else v
            for v in all_variants(params)}


def variant_uses_saliency(variant: Mapping[str, Any]) -> bool:
    """Whether training a variant reads the saliency stage's output (regeneration, attention or subject terms);
    the workflow makes only those jobs wait for that stage."""
    return bool(variant["feature_regen"] or variant["attn_loss_weight"] > 0 or variant["subject_loss_weight"] > 0)


def uses_pretrain(params: Mapping[str, Any]) -> bool:
    """Whether the workflow runs the pretrain stage: a tiny backbone with `pretrain.steps` > 0."""
    return params["model"]["backbone"] == "tiny" and params["pretrain"]["steps"] > 0


def pretrained_backbone(params: Mapping[str, Any]) -> Path | None:
    """The pretrain stage's model folder when the params pretrain the tiny backbone, else None (random init or hub)."""
    return Paths.from_params(params).pretrain / "model" if uses_pretrain(params) else None


def uses_image_features(params: Mapping[str, Any]) -> bool:
    """Whether the workflow runs the features stage and its train, mine and evaluate jobs read image features."""
    return params["model"]["image_features"] == "cached"


def launch_processes(accelerate_config: str | Path) -> int:
    """Processes per node that `accelerate launch --config_file accelerate_config` starts (a job's CPU share)."""
    path = Path(accelerate_config)
    if not path.is_file():
        raise ParamsError(f"train.accelerate_config: file not found: {path}")
    config = yaml.safe_load(path.read_text())
    processes = config.get("num_processes", 1) if isinstance(config, dict) else None  # accelerate's own default
    if not isinstance(processes, int) or processes < 1:
        raise ParamsError(f"{path}: num_processes must be a positive integer, got {processes!r}")
    return processes


# Keys of an accelerate config that, at these values, leave a single process exactly as a plain Python process
PLAIN_ACCELERATE = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "num_machines": 1,
                    "num_processes": 1, "machine_rank": 0, "mixed_precision": "no", "use_cpu": True,
                    "main_training_function": "main"}


def plain_accelerate(accelerate_config: str | Path) -> bool:
    """Whether `accelerate launch --config_file accelerate_config` would only start one CPU process with accelerate's
    defaults (params/accelerate/cpu.yaml): then `ssame launch` runs the training directly, 1.7 s sooner per job."""
    config = yaml.safe_load(Path(accelerate_config).read_text())
    return isinstance(config, dict) and all(PLAIN_ACCELERATE.get(k, object()) == v for k, v in config.items())


# train keys that change where or how a run is scheduled, logged or checkpointed, never what it computes
RUN_ONLY_KEYS = ("variants", "seed_systems", "seeds", "checkpoint_every", "num_workers")


def stage_params(params: Mapping[str, Any], rule: str, variant: str | None = None) -> dict[str, Any]:
    """The params a job of `rule` depends on, by dotted key: Snakemake reruns a job when one changes (the rule's
    `params`), and the generated dvc.yaml lists the same keys. A training job depends on its own variant and the
    train keys that shape a run, so a new seed or variant leaves the other runs up to date."""
    pretrain = ["pretrain"] if uses_pretrain(params) else []
    if rule == "train":
        keys = ["model", *pretrain,
                *(["mine"] if variant_mines(params["variants"][variant]) else []), f"variants.{variant}",
                *(f"train.{key}" for key in params["train"] if key not in RUN_ONLY_KEYS)]
    else:
        report = ["model", "variants", "train.variants", "train.seeds", "evaluate"]
        keys = {"pretrain": ["pretrain", "model"], "features": ["model", *pretrain, "evaluate.batch_size"],
                "mine": ["mine"], "report": report,
                "report_seed_systems": [*report, "train.seed_systems"]}.get(rule, [rule])
    return {key: _lookup(params, key) for key in keys}


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):  # a variant name may hold dashes, never dots (schema)
        node = node[part]
    return _thaw(node)


LAUNCHED_RULES = ("train", "evaluate")  # started through `ssame launch` (devices, ports, processes, nodes)


def job_threads(params: Mapping[str, Any], rule: str) -> int:
    """CPU cores of one job of `rule` (per node): params resources, or for null one per launched process."""
    threads = params["resources"][rule]["threads"]
    if threads is not None:
        return threads
    if rule == "train":
        return launch_processes(params["train"]["accelerate_config"])
    return max(1, params["resources"][rule]["gpu"])


def job_resources(params: Mapping[str, Any], rule: str) -> dict[str, int]:
    """Snakemake resources of `rule`'s jobs: memory (MB), runtime (min), GPUs per node and nodes."""
    job = params["resources"][rule]
    return {"mem_mb": job["mem_mb"], "runtime": job["runtime"], "gpu": job["gpu"], "nodes": job["nodes"]}


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: str | Path) -> Params:
    """Read, validate and freeze a params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ParamsError(f"{path}: not valid YAML: {type(err).__name__}: {err}") from err
    return as_params(raw if raw is not None else {}, source=str(path))


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, derived from params (the only place these layouts are spelled out)."""

    results: Path
    reports: Path

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Paths:
        return cls(Path(params["results_dir"]), Path(params["reports_dir"]))

    @property
    def data(self) -> Path:
        return self.results / "data"

    def report(self, seed_systems: bool) -> Path:
        """The tables/ and figures/ of target `all`, or of target `seed_systems` (its own folder)."""
        return self.reports / "seed_systems" if seed_systems else self.reports

    @property
    def pretrain(self) -> Path:
        return self.results / "pretrain"

    @property
    def features(self) -> Path:
        """The frozen vision tower's features of every benchmark image (the features stage)."""
        return self.results / "features"

    @property
    def saliency(self) -> Path:
        return self.results / "saliency"

    def mine(self, seed: int) -> Path:
        """UniME-V2's mined negatives of one seed (negatives.parquet, stats.json)."""
        return self.results / "mine" / f"seed{seed}"

    def run(self, variant: str, seed: int) -> str:
        return f"{variant}/seed{seed}"

    def model(self, variant: str, seed: int) -> Path:
        return self.results / "train" / self.run(variant, seed) / "model"

    def train_metrics(self, variant: str, seed: int) -> Path:
        return self.results / "train" / self.run(variant, seed) / "metrics.json"

    def train_history(self, variant: str, seed: int) -> Path:
        """Per-step training losses (one row per optimizer step), for curves and `dvc plots`."""
        return self.results / "train" / self.run(variant, seed) / "history.csv"

    def checkpoints(self, variant: str, seed: int) -> Path:
        """Resumable training state; deliberately not a Snakemake output (Snakemake clears outputs of failed jobs)."""
        return self.results / "checkpoints" / self.run(variant, seed)

    def eval(self, variant: str, seed: int) -> Path:
        return self.results / "eval" / self.run(variant, seed)
