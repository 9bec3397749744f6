"""Orchestration around the `dept` method library: Ray featurize, Parquet feature store, Ray Tune, MLflow, CLI."""
