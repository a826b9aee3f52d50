"""Publish stage: one PublishBundle, written as a Hugging Face Hub folder and in PersonaVLM's native layout."""

from persona_factory.publish.bundle import PublishBundle
from persona_factory.publish.hub_layout import export_hub_layout
from persona_factory.publish.native import export_native

__all__ = ["PublishBundle", "export_hub_layout", "export_native"]
