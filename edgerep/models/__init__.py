"""Model specs in (zoo:, timm:, ultralytics:, .pt2, a factory): load_model gives the unfused module with its shape,
preprocessing and task; a model's outputs named and compared."""
