"""MLflow helpers: the run tree, safe parameters, the model registry and the pyfunc flavor."""
