"""The process shell: what lives as long as the process, around the merchant pipelines.

    daemon.py        signals, reload, drain, readiness, the pipelines that come and go
    http.py          the routes: metrics, health, readiness, status, webhook, admin
    listener.py      the socket: slow clients, bad requests, EMFILE
    request_body.py  a client's request body: bounded, decoded, each failure named
    deadline.py      the webhook's 5 s write deadline
    logs.py          structlog set-up        looplag.py   how late the event loop wakes
    sdnotify.py      systemd's notify protocol  statelock.py one daemon per state file
    preflight.py     what `run` needs from the machine, checked before it is needed
    upkeep.py        what the shell keeps in the store across processes (clean stop, budget)

One merchant's pipeline, which the shell starts and stops, is `daemon.pipeline`.
"""
