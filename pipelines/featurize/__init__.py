"""``featurize``: frozen CLIP image features of datasets, computed once with Ray, written to the Parquet store.

What is encoded per dataset: every val and test image at view 0 (the CLIP test transform), and the union over the
requested seeds of the few-shot train draws at view 0 and at augmented views 1..K (``dept.transforms.train_view``,
deterministic per (view seed, image, view)). The val few-shot draws are a subset of val, already at view 0.

Modules: :mod:`~pipelines.featurize.plan` (config, planning, manifest header), :mod:`~pipelines.featurize.encode`
(the Ray Data decode and encode stages, shard commits), :mod:`~pipelines.featurize.run` (:func:`featurize`).
"""
from pipelines.featurize.encode import ClipEncoder, decode_images
from pipelines.featurize.plan import FeaturizeConfig, FeaturizeError, FeaturizeResult
from pipelines.featurize.run import featurize

__all__ = ["ClipEncoder", "FeaturizeConfig", "FeaturizeError", "FeaturizeResult", "decode_images", "featurize"]
