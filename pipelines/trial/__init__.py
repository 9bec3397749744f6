"""What one trial is, wherever it runs (``train``, a Tune trial, a population host, zero-shot):

- :mod:`~pipelines.trial.settings`: every setting of a trial (:class:`Hyperparameters`), and a config's seed;
- :mod:`~pipelines.trial.context`: what all trials of one dataset share (:class:`TrialContext`, :func:`make_context`);
- :mod:`~pipelines.trial.targets`: the transfer protocols' targets of a source;
- :mod:`~pipelines.trial.plan`: one trial's data, learner, per-epoch validation and final scoring; :func:`run_trial`;
- :mod:`~pipelines.trial.population`: same-shape trials trained as one batched step;
- :mod:`~pipelines.trial.trainable`: the Ray Tune function trainable;
- :mod:`~pipelines.trial.zero_shot`: CLIP zero-shot on a dataset, as a trial's context sees it.
"""
