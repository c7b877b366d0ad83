"""The engine: port types, node declarations, workflow parsing, validation, execution, the cache.

It knows nothing of diffusion; the nodes in ``sdflow.nodes`` import this small API.
"""

from .cache import CacheStats, ComponentCache, process_cache
from .declare import REGISTRY, Input, NodeSpec, Param, PortType, node
from .errors import ModelSourceError, NodeRunError, Problem, ValidationError, WorkflowError
from .execute import RunContext, execute
from .validate import CheckContext, Plan, validate
from .workflow import Workflow, load_workflow, parse_workflow, resolve_interpolations

__all__ = [
    "CacheStats", "CheckContext", "ComponentCache", "Input", "ModelSourceError", "NodeRunError", "NodeSpec",
    "Param", "Plan", "PortType", "Problem", "REGISTRY", "RunContext", "ValidationError", "Workflow",
    "WorkflowError", "execute", "load_workflow", "node", "parse_workflow", "process_cache",
    "resolve_interpolations", "validate",
]
