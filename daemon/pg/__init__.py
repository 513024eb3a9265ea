"""PostgreSQL for several replicas: one fenced leader per merchant, nothing lost on failover.

    connect.py   pools and connections safe behind PgBouncer in transaction mode
    faults.py    every database error as `StoreUnavailable`: the one translation point
    dsn.py       `daemon.state` as a DSN: checked, described without secrets
    migrate.py   the schema as ordered steps, applied once at start (the store's tables too)
    lease.py     the lease row, its epoch, and the fence every leader write passes
    leader.py    LeaseKeeper: acquire/renew every TTL/3, run the leader's work only while leading
    budget.py    keyCRM's request window, shared so a new leader cannot overspend it
    lookups.py   the durable look-up queue: any replica enqueues, the leader consumes
    replica.py   Replica: all of the above for one process, the one object the daemon wires

The store itself is `daemon.store.PostgresStore`. Each module takes a connection (or a pool)
from its caller, so one pool serves them all; the callers take it through `faults.Database`.
"""
