"""The embedded backend: SQLite in WAL mode, one file, worked from one thread of its own.

schema.py   the schema, and the steps that bring an older state file up to it
backend.py  `SQLiteStore`: the `Store` contract over that file
"""
