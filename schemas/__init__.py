"""Provider schemas: turn a callback body into canonical status events. No I/O.

The bottom layer: the canonical event (events.py), the status vocabulary and rule
(statuses.py), each provider's dialect, and the registry of providers (registry.py). It
imports nothing else of Ticks' (docs/development.md has the map).
"""
