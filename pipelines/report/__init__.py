"""``dept-pipeline report``: the paper-style tables read back from MLflow: base-to-new (:mod:`~pipelines.report.table`
builds it, :mod:`~pipelines.report.formats` writes it, :mod:`~pipelines.report.make` does both) and the transfer
protocols' (:mod:`~pipelines.report.transfer`)."""
