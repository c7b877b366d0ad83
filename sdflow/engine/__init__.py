"""The engine: port types, node declarations, workflow parsing, validation, execution, the cache.

It knows nothing of diffusion; the nodes in ``sdflow.nodes`` import this small API.
"""

from .cache import CacheStats, ComponentCache, process_cache
from .declare import REGISTRY, Input, NodeSpec, Param, PortType, node
from .errors import InvalidWorkflow, ModelSourceError, NodeRunError, Problem, ValidationError, WorkflowError
from .execute import RunContext, execute
from .validate import CheckContext, Plan, validate
from .workflow import NO_RESOLVERS, Workflow, load_workflow, parse_workflow, resolve_interpolations, resolver_in

__all__ = [
    "CacheStats", "CheckContext", "ComponentCache", "Input", "InvalidWorkflow", "ModelSourceError", "NodeRunError", "NodeSpec",
    "Param", "Plan", "PortType", "Problem", "REGISTRY", "RunContext", "ValidationError", "Workflow",
    "WorkflowError", "execute", "load_workflow", "node", "parse_workflow", "process_cache",
    "resolve_interpolations", "resolver_in", "validate", "NO_RESOLVERS",
]
