"""Several replicas of one deployment on PostgreSQL: which merchants each leads, and when.

    members.py     each replica's heartbeat row; who is live
    assignment.py  merchants -> live replicas: rendezvous hashing, fair-share cap, sticky (pure)
    leader.py      LeaseKeeper: one merchant's lease, bid when assigned, drained handover
    configs.py     which config leads: fingerprints, their generations, each replica's heartbeat
    report.py      what /status says about one merchant on this replica
    replica.py     Replica: all of it for one process and all its merchants, the one object
                   the shell wires

The lease row, its fence and the shared queue and budget are SQL the store owns
(`daemon.store.pg`).
"""
