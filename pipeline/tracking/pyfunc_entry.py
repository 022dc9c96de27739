"""Entry file for MLflow's "models from code": names the pyfunc model object to serve."""

from mlflow.models import set_model

from pipeline.tracking.pyfunc import GPTTextGenerator

set_model(GPTTextGenerator())
