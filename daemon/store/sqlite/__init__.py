"""The embedded backend: SQLite in WAL mode, one file, worked from one thread of its own.

schema.py   the schema, and the steps that bring an older state file up to it
backend.py  `SQLiteStore`: the `Store` contract over that file, put together from
  base.py     the connection, its one thread (`in_thread`), transactions, item load/write
  records.py  keyCRM records and the planning shares
  queue.py    channel items and their work queue
  reading.py  reads for status, CLI and metrics; history pruning; meta
  lookups.py  the webhooks' look-up queue
"""
