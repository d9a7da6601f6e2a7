"""Periodic accelerate state checkpoints, outside Snakemake's declared outputs, written atomically.

`<results>/checkpoints/<variant>/seed<seed>/step<N>/` holds `accelerator.save_state` (model, optimizer, scheduler,
every process's RNG) plus `trainer.json` (step, loss history, MLflow run id). Only the newest is kept; a killed run
leaves at worst a `.tmp-*` folder, which is ignored and replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TRAINER_FILE = "trainer.json"


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    done = [p for p in directory.glob("step*") if (p / TRAINER_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix("step")), default=None)


def save(accelerator, directory: Path, step: int, trainer: dict[str, Any]) -> Path:
    """Save the full training state at `step` (all processes call this) and drop older checkpoints."""
    tmp = directory / f".tmp-step{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    final = directory / f"step{step}"
    if accelerator.is_main_process:
        (tmp / TRAINER_FILE).write_text(json.dumps({"step": step, **trainer}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on one filesystem: a checkpoint is complete or absent
        for old in directory.iterdir():
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, checkpoint: Path) -> dict[str, Any]:
    """Restore the training state saved in `checkpoint`; return its trainer record (step, history, run id)."""
    record_path = checkpoint / TRAINER_FILE
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable checkpoint record {record_path}: {err}") from err
    accelerator.load_state(str(checkpoint))
    return record
