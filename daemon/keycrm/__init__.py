"""The keyCRM side: one client, one request budget, and the loops that read keyCRM.

    client.py        the HTTP client: budget, strict paging, retries that honour Retry-After
    payloads.py      response bodies to records, strictly: a page is used whole or not at all
    page_split.py    a large page decoded offer by offer
    completeness.py  when a scan counts as complete (it fails closed)
    budget.py        at most N requests in any window, evenly paced, by priority
    lookups.py       the webhook look-up queue, on disk
    source.py        the scan, the catalog refresh and the look-ups, as loops
    feed.py          the order feed: orders changed since its watermark, their SKUs looked up

The daemon asks keyCRM only through `client.py`, and so through the one budget.
"""
