"""Algorithms (`Algorithm`, `SFTAlgorithm`) and their registry."""
