"""The run layer: the one way through the engine that every door (command, sweeps, workers, web API, reproduce) takes.

compose a config (``compose``) -> ``plan(workflow, config)`` (every check, one pass) -> ``run`` (the run context,
the engine, the one writer of outputs and their manifest, the typed run record) -> ``sweep`` for a ``-m`` sweep's
shared batches, ``remote`` for its batches on Ray actors or Slurm tasks.
"""

from .compose import check_command_line, compose_config, output_folder_problem, quote_text_values
from .outputs import RunFolder, claim_folder
from .planning import check_machine, plan, resolved_workflow_yaml
from .execution import RunResult, run, run_context, run_workflow

__all__ = ["RunFolder", "RunResult", "check_command_line", "check_machine", "claim_folder", "compose_config",
           "output_folder_problem", "plan", "quote_text_values", "resolved_workflow_yaml", "run", "run_context", "run_workflow"]
