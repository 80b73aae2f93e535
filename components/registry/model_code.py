"""The model code MLflow logs for every recommender version (MLflow "models from code").

:func:`components.registry.pyfunc.log_bundle_model` passes this file's path as ``python_model``:
MLflow copies the file into the model and, on load, runs it instead of unpickling an object.
It only names the class, so the code that runs is the installed ``components`` package's (as
with the pickled versions, which referenced the same class by name).
"""

import mlflow

from components.registry.pyfunc import RecommenderPyfunc

mlflow.models.set_model(RecommenderPyfunc())
