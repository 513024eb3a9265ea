"""Several replicas of one deployment on PostgreSQL: who leads each merchant, and when.

    leader.py    LeaseKeeper: acquire/renew every TTL/3, run the leader's work only while leading
    configs.py   which config leads: fingerprints, their generations, each replica's heartbeat
    replica.py   Replica: all of it for one process, the one object the shell wires

The lease row, its fence and the shared queue and budget are SQL the store owns
(`daemon.store.pg`).
"""
