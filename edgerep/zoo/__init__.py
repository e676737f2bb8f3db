"""Training-time re-parameterizable blocks and the model families we build from them.

Importing this package registers every family (each module registers its own models).
"""
# Each family module registers itself on import; keep this list in one place.
from edgerep.zoo import acb, dbb, digits, ghostnet, mobileone, orepa, repvgg, repyolo, saconv, yolo_digits  # noqa: E402,F401
from edgerep.zoo.registry import ZooEntry, create_model, get_entry, model_names, register_model

__all__ = ["ZooEntry", "create_model", "get_entry", "model_names", "register_model"]
