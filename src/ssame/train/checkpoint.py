"""Periodic accelerate state checkpoints, outside Snakemake's declared outputs, written atomically.

`<results>/checkpoints/<variant>/seed<seed>/step<N>/` holds `accelerator.save_state` (model, optimizer, the LR
schedule, every process's RNG) plus `trainer.json` (step, loss history, MLflow run id, and the params that shaped
the run with their fingerprint). Only the newest is kept; a killed run leaves at worst a `.tmp-*` folder, which is
ignored and replaced. A checkpoint is resumed only under the params it was written with.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssame.config import RUN_ONLY_KEYS, as_params, fingerprint, uses_pretrain, variant_mines, variant_uses_saliency

TRAINER_FILE = "trainer.json"


def params_record(params: Mapping[str, Any], variant_name: str, seed: int) -> dict[str, Any]:
    """What shapes a training run: the data, model and train sections (less RUN_ONLY_KEYS), the variant, the seed,
    the saliency section when the variant reads the saliency maps and the pretrain section when it fine-tunes a
    pretrained tiny backbone. JSON-ready."""
    plain = as_params(params).to_dict()
    record = {"data": plain["data"], "model": plain["model"],
              "train": {k: v for k, v in plain["train"].items() if k not in RUN_ONLY_KEYS},
              "variant": {variant_name: plain["variants"][variant_name]}, "seed": seed}
    if variant_uses_saliency(plain["variants"][variant_name]):
        record["saliency"] = plain["saliency"]
    if uses_pretrain(plain):
        record["pretrain"] = plain["pretrain"]
    if variant_mines(plain["variants"][variant_name]):
        record["mine"] = plain["mine"]
    return record


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """`key: saved -> current` for every leaf that differs (dotted keys)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [line for key in sorted(set(saved) | set(current), key=str)
                for line in differences(saved.get(key, "<absent>"), current.get(key, "<absent>"),
                                        f"{prefix}{key}.")]
    if saved == current:
        return []
    return [f"{prefix.rstrip('.')}: {json.dumps(saved)[:80]} in the checkpoint, {json.dumps(current)[:80]} now"]


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    done = [p for p in directory.glob("step*") if re.fullmatch(r"step[0-9]+", p.name) and (p / TRAINER_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix("step")), default=None)


def save(accelerator, directory: Path, step: int, trainer: dict[str, Any], params: dict[str, Any]) -> Path:
    """Save the full training state at `step` (all processes call this), the trainer record and the run's
    `params_record` with its fingerprint, and drop older checkpoints."""
    tmp = directory / f".tmp-step{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    final = directory / f"step{step}"
    if accelerator.is_main_process:
        record = {"step": step, **trainer, "fingerprint": fingerprint(params), "params": params}
        (tmp / TRAINER_FILE).write_text(json.dumps(record) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on one filesystem: a checkpoint is complete or absent
        for old in directory.iterdir():
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def read(checkpoint: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The trainer record (step, history, run id) of `checkpoint`, if it was written under `params` (a
    `params_record`); else a ValueError naming the checkpoint and every difference. Call it before building the
    model, then `restore`."""
    record_path = checkpoint / TRAINER_FILE
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"unreadable checkpoint record {record_path}: {err}") from err
    if not isinstance(record, dict):
        raise ValueError(f"unreadable checkpoint record {record_path}: expected an object, got {type(record).__name__}")
    advice = f"delete {checkpoint.parent} to train from scratch, or rerun with the checkpoint's params"
    if "params" not in record or "fingerprint" not in record:
        raise ValueError(f"checkpoint {checkpoint} records no params fingerprint (written by an older ssame); "
                         f"{advice}")
    if record["fingerprint"] != fingerprint(params):
        changed = differences(record["params"], params) or ["(fingerprint only)"]
        raise ValueError(f"checkpoint {checkpoint} was written under other params; refusing to resume. Differences: "
                         + "; ".join(changed) + f". {advice}")
    step, fields = record.get("step"), {"history": (list,), "run_id": (str, type(None)), "seconds": (int, float)}
    wrong = [k for k, kinds in fields.items() if type(record.get(k, ...)) not in kinds]  # bool is no number here
    if wrong or type(step) is not int or checkpoint.name != f"step{step}":
        raise ValueError(f"unreadable checkpoint record {record_path}: key(s) {wrong or ['step']} missing or "
                         f"malformed (step {step!r} in folder {checkpoint.name}); {advice}")
    return record


def restore(accelerator, checkpoint: Path) -> None:
    """Load model, optimizer, LR schedule and RNG states saved in `checkpoint` (all processes call this)."""
    accelerator.load_state(str(checkpoint))
