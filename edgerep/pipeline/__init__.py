"""The build's stages (small typed functions with cache keys), their composition, the report, the recommendation and pictures."""
