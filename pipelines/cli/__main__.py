"""``python -m pipelines.cli``: the ``dept-pipeline`` command without the installed script."""
from pipelines.cli import main

main(prog_name="dept-pipeline")
