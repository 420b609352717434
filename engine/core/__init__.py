"""Foundations every layer may use: errors, the name rule, table schemas, catalogues and pools,
presets and resource requests, atomic outputs. Imports nothing else of engine/."""
