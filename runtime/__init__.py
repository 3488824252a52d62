"""intentusnet runtime: deterministic intent routing with durable, replayable records.

Pure: no broker, no metrics, no sockets. See `IntentusRuntime` for the in-process API.
"""

from runtime.clock import Clock, FixedClock, SystemClock
from runtime.engine import IntentusRuntime, Outcome
from runtime.envelope import (
    IntentContext,
    IntentEnvelope,
    IntentMetadata,
    IntentRef,
    Priority,
    RequestContext,
    RoutingOptions,
    RoutingStrategy,
)
from runtime.errors import (
    AgentError,
    EnvelopeError,
    ErrorCode,
    IntentusError,
    PolicyError,
    RecordExists,
    RecordNotFound,
    RecordStoreError,
    RecordUnstorable,
    RegistryError,
)
from runtime.middleware import Middleware
from runtime.observer import Observer
from runtime.policy import Policy, load_policy
from runtime.registry import AgentDefinition, AgentRegistry
from runtime.response import AgentResponse, ErrorInfo, ResponseMetadata
from runtime.stores.base import RecordStore
from runtime.stores.files.store import FileRecordStore
from runtime.stores.memory import MemoryRecordStore
from runtime.version import __version__

__all__ = [
    "AgentDefinition",
    "AgentError",
    "AgentRegistry",
    "AgentResponse",
    "Clock",
    "EnvelopeError",
    "ErrorCode",
    "ErrorInfo",
    "FileRecordStore",
    "FixedClock",
    "IntentContext",
    "IntentEnvelope",
    "IntentMetadata",
    "IntentRef",
    "IntentusError",
    "IntentusRuntime",
    "MemoryRecordStore",
    "Middleware",
    "Observer",
    "Outcome",
    "Policy",
    "PolicyError",
    "Priority",
    "RecordExists",
    "RecordNotFound",
    "RecordStore",
    "RecordStoreError",
    "RecordUnstorable",
    "RegistryError",
    "RequestContext",
    "ResponseMetadata",
    "RoutingOptions",
    "RoutingStrategy",
    "SystemClock",
    "__version__",
    "load_policy",
]
