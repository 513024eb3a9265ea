"""One merchant's pipeline, built from its `[keycrm]`, `[sync]` and `[[channel]]` tables.

    assembly.py   the stages (source, reconciler, dispatchers, verify) wired from one config
"""
