"""The engine: port types, node declarations, workflow parsing, validation, execution, the run record, the cache.

It knows nothing of diffusion; the nodes in ``sdflow.nodes`` import this small API.
"""

from .cache import CacheStats, ComponentCache, process_cache
from .declare import REGISTRY, Input, NodeSpec, Param, PortType, ValueType, node
from .errors import InvalidWorkflow, ModelSourceError, NodeRunError, Problem, ValidationError, WorkflowError
from .execute import Files, RunContext, execute, per_image_values, value_for_image
from .record import SCHEMA_VERSION, Entry, Fallback, RunRecord, param_value, per_image
from .reuse import OutputCache, process_output_cache
from .validate import CheckContext, Plan, given_text, validate
from .workflow import NO_RESOLVERS, Workflow, load_workflow, parse_workflow, resolve_interpolations, resolver_in

__all__ = [
    "CacheStats", "CheckContext", "ComponentCache", "Entry", "Fallback", "Files", "Input", "InvalidWorkflow",
    "ModelSourceError", "NO_RESOLVERS", "NodeRunError", "NodeSpec", "OutputCache", "Param", "Plan", "PortType", "Problem", "REGISTRY",
    "RunContext", "RunRecord", "SCHEMA_VERSION", "ValidationError", "ValueType", "Workflow", "WorkflowError", "execute",
    "given_text", "load_workflow", "node", "param_value", "parse_workflow", "per_image", "per_image_values",
    "process_cache", "process_output_cache", "resolve_interpolations", "resolver_in", "validate", "value_for_image",
]
