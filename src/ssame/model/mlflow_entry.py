"""MLflow's model-from-code entry of a logged embedder (`ssame.model.mlflow_model.log_embedder`)."""

from mlflow.models import set_model

from ssame.model.mlflow_model import EmbedderModel

set_model(EmbedderModel())
