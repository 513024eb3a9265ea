"""The PostgreSQL backend, for several replicas on one database, and the SQL they share.

    backend.py   `PostgresStore`: the same `Store` contract as SQLite, put together from
      base.py      the pool, fenced and locked transactions, item load/save, the shared SQL
      records.py   keyCRM records and the planning shares
      queue.py     channel items and their work queue
      reading.py   reads for status, CLI and metrics; history pruning; meta
    merchants.py each merchant's state in a schema of its own: its steps, its scope (a
                 transaction-local search_path), its lock keys, dropping one merchant
    stores.py    `PostgresStores`: every merchant's store of a process over one pool
    connect.py   pools and connections safe behind PgBouncer in transaction mode
    faults.py    every database error as `StoreUnavailable`: the one translation point
    migrate.py   the schema as ordered steps, applied once at start
    lease.py     the lease row, its epoch, and the fence every leader write passes
    budget.py    keyCRM's request window, shared so a new leader cannot overspend it
    lookups.py   the durable look-up queue: any replica enqueues, the leader consumes

Each module takes a connection (or a pool) from its caller, so one pool serves them all; the
callers take it through `faults.Database`. Who leads, and when, is `daemon.replicas`.
"""
