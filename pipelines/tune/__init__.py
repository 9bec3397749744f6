"""``dept-pipeline tune``: the Ray Tune driver (:mod:`~pipelines.tune.runner`) and the YAML search spaces
(:mod:`~pipelines.tune.spaces`). What one trial is — its settings, context, plan, population host and trainable —
lives in :mod:`pipelines.trial`, which ``train`` and zero-shot use too."""
