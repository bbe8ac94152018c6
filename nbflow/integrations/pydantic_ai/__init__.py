"""Durable pydantic-ai agents: runs are nbflow flows, model requests and tool calls are nbflow tasks.

::

    from pydantic_ai import Agent
    from nbflow.integrations.pydantic_ai import DurableAgent, TaskConfig

    agent = Agent("openai:gpt-4o", name="geography", instructions="You are an expert in geography.")
    durable = DurableAgent(agent, model_task_config=TaskConfig(retries=3, retry_delay_seconds=1))
    result = await durable.run("What is the capital of Mexico?")

Needs the ``ai`` extra: ``pip install "nbflow[ai]"``.
"""

from __future__ import annotations

try:
    import pydantic_ai  # noqa: F401
except ImportError as _error:
    raise ImportError(
        'nbflow.integrations.pydantic_ai needs pydantic-ai; install it with: pip install "nbflow[ai]"'
    ) from _error

from nbflow.integrations.pydantic_ai._agent import DurableAgent
from nbflow.integrations.pydantic_ai._durability import NON_RETRYABLE_ERRORS, NbflowDurability, TaskConfig
from nbflow.integrations.pydantic_ai._keys import AGENT_INPUTS, AgentInputs

__all__ = [
    # the agent wrapper and its options
    "DurableAgent",
    "TaskConfig",
    # the capability, for agents that run inside a flow of your own
    "NbflowDurability",
    # cache keys and retries
    "AGENT_INPUTS",
    "AgentInputs",
    "NON_RETRYABLE_ERRORS",
]
