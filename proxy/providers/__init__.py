"""Provider adapters by name: translation only, no I/O."""

from __future__ import annotations

from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import ProviderAdapter
from proxy.providers.openai import AzureAdapter, OpenAIAdapter

# The mock provider speaks OpenAI's format; its in-process transport lives in upstream.py.
ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAIAdapter(),
    "azure": AzureAdapter(),
    "anthropic": AnthropicAdapter(),
    "mock": OpenAIAdapter(),
}


def adapter_for(provider: str) -> ProviderAdapter:
    return ADAPTERS[provider]
