"""Inspecting and shipping trained models: the model summary (bits, memory, MACs)."""

from .summary import LayerRow, ModelSummary, model_summary

__all__ = ["model_summary", "ModelSummary", "LayerRow"]
