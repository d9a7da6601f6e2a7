"""A trained embedder as an MLflow pyfunc model, logged with its training run and loaded back with
`mlflow.pyfunc.load_model("runs:/<train run id>/model")`; `predict` embeds rows of (text, image). Logged as a model
from code (`mlflow_entry.py`), so loading imports the installed `ssame` instead of unpickling an object."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from ssame.model.embedder import Embedder
from ssame.model.inputs import InputBuilder

PREDICT_PARAMS = {"image_root": ".", "saliency_dir": ""}


class EmbedderModel(PythonModel):
    """The model folder of the train stage (artifact `model`) and the input settings it was trained with."""

    def load_context(self, context) -> None:
        cfg = context.model_config
        self.embedder, self.tokenizer, self.processor = Embedder.load(
            Path(context.artifacts["model"]), cfg["attn_implementation"], mrope=cfg["mrope"])
        self.embedder.eval()
        self.max_text_tokens, self.image_side = cfg["max_text_tokens"], cfg["image_side"]

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """Unit-norm embeddings (rows x dim) of `model_input`'s columns `text` (MMEB's `<|image_1|>` placeholder
        marks the image) and `image` (a path under params `image_root`, "" for none). Variants that regenerate
        visual features read the saliency stage's maps from params `saliency_dir`."""
        params = {**PREDICT_PARAMS, **(params or {})}
        missing = {"text", "image"} - set(model_input.columns)
        if missing:
            raise KeyError(f"model input needs columns 'text' and 'image'; missing {sorted(missing)}")
        store = None
        if self.embedder.uses_saliency:
            if not params["saliency_dir"]:
                raise ValueError("this variant regenerates visual features from saliency maps: predict with "
                                 "params={'saliency_dir': <results_dir>/saliency, 'image_root': ...}")
            from ssame.saliency.store import SaliencyStore

            store = SaliencyStore(Path(params["saliency_dir"]))
        build = InputBuilder(self.tokenizer, self.processor, Path(params["image_root"]), self.max_text_tokens,
                             image_side=self.image_side)
        batch = build(model_input["text"].tolist(), model_input["image"].fillna("").tolist(), store)
        with torch.no_grad():
            return self.embedder(batch).embeddings.numpy()


def log_embedder(mlflow: Any, model_dir: Path, settings: dict[str, Any], dim: int) -> None:
    """Log `model_dir` to the active run as pyfunc model `model`; `settings`: attn_implementation, mrope,
    max_text_tokens and image_side, as training used them."""
    from importlib.metadata import version

    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": ["a red circle"], "image": [""]})
    signature = infer_signature(example, np.zeros((1, dim), dtype=np.float32), params=PREDICT_PARAMS)
    with warnings.catch_warnings():  # the signature is given; an input example would load the model once more
        warnings.filterwarnings("ignore", "An input example was not provided")
        mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("mlflow_entry.py")),
                                artifacts={"model": str(model_dir)}, model_config=settings, signature=signature,
                                pip_requirements=[f"ssame=={version('ssame')}"])
