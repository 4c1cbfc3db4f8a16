"""Segmentation networks, built by registered name (see :mod:`udaseg.models.registry`)."""

from udaseg.models.registry import ModelSpec, create_model, list_models, model_spec, register_model

__all__ = ["ModelSpec", "create_model", "list_models", "model_spec", "register_model"]
