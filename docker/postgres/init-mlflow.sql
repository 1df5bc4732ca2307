-- Runs once, when the postgres volume is first created: MLflow gets its own database
-- next to Prefect's (POSTGRES_DB), owned by the same user.
CREATE DATABASE mlflow;
