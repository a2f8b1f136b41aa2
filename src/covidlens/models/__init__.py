"""Models: one registry; importing this package registers covidlens' own architectures."""

# Each module registers its networks when imported.
from covidlens.models import classical, coronet, resnet3d, squeezenet, zoo  # noqa: F401
from covidlens.models.registry import MODELS, create_model, is_known_model, register_model

__all__ = ["MODELS", "create_model", "is_known_model", "register_model"]
