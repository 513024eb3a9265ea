"""Records into desired values in the store, under each scan's guard.

    reconciler.py  changed keyCRM records to desired values per channel; wakes the dispatchers
    holds.py       the guard's verdict at a scan's end, and each channel's hold until released

What a record becomes is `daemon.rules`; where the values wait to be sent is `daemon.store`.
"""
