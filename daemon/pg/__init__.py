"""PostgreSQL for several replicas: migrations, the fenced leader lease, the shared keyCRM budget
and the durable look-up queue.

Each module has one job and takes a connection (or a pool) from the caller, so the store, the
leader loop and the webhook route share one pool. Everything here is safe behind PgBouncer in
transaction mode (see `daemon.pg.connect`).
"""
