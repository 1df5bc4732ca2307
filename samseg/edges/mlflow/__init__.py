"""samseg's MLflow edge: the client (timeouts, one-line errors), image and batch runs, the
class registry, and the conventions a run's tags and lineage follow. The only place that
talks to MLflow (the engine goes through here; `import mlflow` in these modules is MLflow itself)."""
