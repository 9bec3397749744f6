"""Analyses of tuned experiments read back from MLflow and the feature store (``dept-pipeline analyze``)."""
