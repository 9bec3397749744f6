"""MLflow tracking for ``train`` and ``tune``: one writer, the driver.

``client`` (the :class:`~pipelines.tracking.client.Tracker`, URI checks, names, the ``train`` run),
``trial_logger`` (the Ray Tune callback that logs trials), ``summary`` (the parent run: best configuration,
results table, plots).

Layout in MLflow:
- one experiment per ``--experiment`` name;
- per dataset one *parent* run (tag ``role=parent``): the best configuration as params, ``best_*`` metrics, and
  artifacts ``results.csv`` (every trial), ``space.yaml``, plots (base / new / HM against the loss weight and
  against the fusion weight) and ``best_learned_state/`` (the best trial's prompts + CAT head, safetensors);
- per Tune trial one *child* run (``mlflow.parentRunId`` = the parent, tag ``role=trial``, tag ``tune.trial_id``)
  named like ``coop+DePT lw0.70 fw0.70 lr2.0e-03 s1`` (``coop lr2.0e-03 s1`` where DePT is not in effect):
  params = every resolved hyperparameter (loss weight and fusion weight separately; both 0 without DePT, which is what the base method is), tags (dataset, method, dept, seed,
  shots, backbone, pretrained, feature_fingerprint, ...), metrics per epoch with ``step = epoch`` (``train_loss``,
  ``lr``, ``val_base_acc``, ``val_new_acc``, ``val_hm`` — or ``pseudo_*`` under the pseudo-new objective), the test
  metrics once (``test_base_acc``, ``test_new_acc``, ``test_hm``) and the fusion-weight sweep's HM as one metric
  per weight (``test_hm_sweep/fw0.70``, ``val_hm_sweep/fw0.70``; ``pipelines.vocabulary.sweep_key``).
  A completed trial (and a ``train`` run) keeps ``learned_state/`` (learned state, hyperparameters.json,
  final.json, config.json: ``dept-pipeline export``); every run has the feature store as its dataset input.
- the transfer protocols (``tune --protocol cross-dataset | domain-generalization``, tag ``protocol``; base-to-new
  runs carry ``protocol=base-to-new``, older ones no tag): one parent per (protocol, source), ``dataset`` = the
  source, ``targets`` tag; per epoch ``val_acc`` (source val images, all classes), at the end ``test_acc``
  (source), ``test_acc/<target>`` per target and ``test_target_avg``; no fusion sweep; the parent's figure is
  ``plots/source_vs_targets.png`` (source accuracy against the targets' mean per trial, zero-shot as a star);
- the experiment's tags: ``mlflow.experimentKind`` (MLflow's kind selector's tag; MLflow 3.17 picks the first tab
  by its sidebar switch instead, docs/mlflow-ui.md) and a saved runs-table view with its comparison chart
  (``client.view_state``, opened by ``client.runs_url``; ``dept-pipeline ui`` prints both). The winner everywhere is
  :mod:`pipelines.selection`'s.

Trials never talk to MLflow. :class:`MlflowTrialLogger` is a ``ray.tune.Callback``: it runs in the driver and logs
each trial's reported results as they arrive, by name (Ray's own bookkeeping keys are not logged). A child run is
looked up by its ``tune.trial_id`` tag before one is created, and epochs already logged are not logged again, so a
retried trial or a resumed experiment never duplicates runs or points.
"""
