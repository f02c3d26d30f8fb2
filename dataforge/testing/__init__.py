"""Test helpers that are real, not mocks: a loopback HTTP server speaking the OpenAI protocol."""

from .loopback import Fault, FaultPlan, LoopbackServer, default_responder

__all__ = ["Fault", "FaultPlan", "LoopbackServer", "default_responder"]
