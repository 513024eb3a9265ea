"""Planning rules: what a keyCRM record becomes in each channel. Pure functions, no I/O.

    plan.py     records to `{item key: value}` per channel (warehouses, reserve, buffer, cap, keys)
    keymap.py   a channel's `key_map` (SKU -> item key), kept compact
    guard.py    one scan's mass-change guard: how many zeroes a channel may lose

Where those values are written and when a held zero goes out is `daemon.reconcile`.
"""
