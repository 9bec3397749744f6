-- Runs once, when the postgres volume is first initialised: a separate database for MLflow's users and
-- permissions, beside the tracking database `mlflow` (POSTGRES_DB). Owned by POSTGRES_USER.
CREATE DATABASE mlflow_auth;
