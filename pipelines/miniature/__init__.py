"""The miniature's pipeline side: pretraining its CLIP with MLflow curves (:mod:`~pipelines.miniature.pretrain`)
and shipping a checkpoint with the package (:mod:`~pipelines.miniature.ship`). The commands are in
:mod:`pipelines.cli.miniature`; the generated world, model and datasets in :mod:`dept.miniature`."""
