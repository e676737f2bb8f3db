"""Training-time re-parameterizable blocks and the model families we build from them.

Importing this package registers every family (each module registers its own models).
"""
from edgerep.zoo.registry import ZooEntry, create_model, get_entry, model_names, register_model

# Each family module registers itself on import; keep this list in one place.
from edgerep.zoo import repvgg, acb, dbb, orepa, mobileone, ghostnet, saconv, digits, repyolo  # noqa: E402,F401

__all__ = ["ZooEntry", "create_model", "get_entry", "model_names", "register_model"]
