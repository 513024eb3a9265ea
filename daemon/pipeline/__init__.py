"""One merchant's pipeline, built from its `[keycrm]`, `[sync]` and `[[channel]]` tables.

    assembly.py   the stages (source, reconciler, dispatchers, verify) wired from one config
    merchant.py   MerchantPipeline: runs, drains and reports one merchant (the shell's interface)
    report.py     its sections of `/status`, from its stages and the store's counts

The shell (`daemon.shell`) holds the pipelines and hands each what the process shares.
"""
