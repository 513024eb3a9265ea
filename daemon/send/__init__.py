"""Sending: from the store's due items to the channels, and reading back what they hold.

    dispatch.py   one worker per channel: claim due items, batch, pace, push, settle outcomes
    pacer.py      a channel's request pacer: holds a rate by schedule
    readback.py   ask a readable channel what it holds; file each item as agreeing or drifted
    verify.py     read-back in the daemon: find drift and heal it; re-assertion

What to send is decided before (`daemon.reconcile`); here only how and when it goes out.
"""
