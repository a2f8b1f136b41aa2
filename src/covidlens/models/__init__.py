"""Models: one registry; importing this package registers covidlens' own architectures."""

from covidlens.models import squeezenet, zoo  # noqa: F401  (each module registers its networks)
from covidlens.models.registry import MODELS, create_model, is_known_model, register_model

__all__ = ["MODELS", "create_model", "is_known_model", "register_model"]
