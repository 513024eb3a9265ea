"""`stocksync demo`: fake keyCRM and channels on loopback, the real daemon against them.

Everything runs in one process: the simulators, a "shop floor" that places an order every
couple of seconds and now and then restocks a SKU, and the daemon itself with a state file in a
temporary folder (or `--state-dir`, kept between runs). No webhook is configured, as behind NAT:
the order feed carries each sale to the channels within seconds (`demo.order_placed`, then
`keycrm.order_feed_queued` and the channels' updates in the log), and the next scan carries the
restocks. Now and then the shop floor also edits a Marketplacer variant by hand, behind
stocksync's back: drift, which `stocksync drift` reports.

It prints lines to copy into another terminal: `status`, `status --watch`, `history`, `resync`,
`drift` and a Prometheus scrape. The read-only ones need nothing but `STOCKSYNC_CONFIG`: they
never resolve channel secrets, and the admin token sits in a file (mode 0600) the config names.
`drift` reads the channels, so it sources the demo's `secrets.env` (mode 0600) first.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import anyio
import structlog
from aiohttp import web

from daemon.commands.demo_handoff import HEARTBEAT, Tally, handoff, heartbeat, reprint_on_enter
from daemon.config.settings import load_config
from daemon.core.channel import ChannelSpec
from daemon.core.errors import StartupError
from daemon.shell.daemon import Daemon
from daemon.shell.logs import configure_logging
from daemon.simulator import (
    FakeInventoryApi,
    FakeKeycrm,
    FakeKlump,
    FakeMarketplacer,
    FakeOrdergroove,
    variant_id,
)

__all__ = ["run_demo"]

log = structlog.get_logger("stocksync.demo")

_CONFIG = """\
[daemon]
state = "{state}"
listen = "127.0.0.1:{port}"
log_format = "console"
admin_token_file = "{admin_token_file}"
shutdown_timeout = "5s"

[keycrm]
base_url = "{keycrm}/v1"
api_key_env = "STOCKSYNC_DEMO_KEYCRM_KEY"
requests_per_minute = 600
poll_interval = "30s"
order_feed_interval = "3s" # sales reach the channels with no webhook (the default is 15s)

[sync]
debounce = "1s"
max_delay = "5s"
verify_interval = "1m"     # read back Marketplacer and Ordergroove; heal what was edited by hand

[[channel]]
name = "shop-pos"
type = "inventory_api"
base_url = "{pos}"
token_env = "STOCKSYNC_DEMO_POS_TOKEN"
match = "upc"
store_map = {{ "1" = "WH-MAIN", "2" = "SHOP-7" }}
rate_limit = "20/s"
concurrency = 4

[[channel]]
name = "klump"
type = "klump"
base_url = "{klump}"
secret_key_env = "STOCKSYNC_DEMO_KLUMP_KEY"
key = "{{product_name}}"
sync_price = true
buffer = 1

[[channel]]
name = "marketplacer"
type = "marketplacer"
base_url = "{marketplacer}"
api_key_env = "STOCKSYNC_DEMO_MARKETPLACER_KEY"
key_map = "{key_map}"

[[channel]]
name = "ordergroove"
type = "ordergroove"
base_url = "{ordergroove}"
public_id = "{og_public_id}"
sig_field = "{og_sig_field}"
hash_key_env = "STOCKSYNC_DEMO_ORDERGROOVE_HASH_KEY"
key = "{{sku}}"
live_threshold = 2
"""


async def _serve(stack: AsyncExitStack, app: web.Application) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}"


async def _shop_floor(keycrm: FakeKeycrm, every: float, tally: Tally) -> None:
    """Place an order of a SKU or two now and then, and restock one every fifth time: keyCRM
    lists the orders by change time (the order feed reads them); a restock shows in a scan."""
    rng = random.Random(42)  # noqa: S311
    offers = [o for o in keycrm.offers.values() if o.sku]
    turn = 0
    while True:
        await anyio.sleep(every)
        turn += 1
        if turn % 5 == 0:
            offer = rng.choice(offers)
            warehouse = rng.choice(sorted(offer.stock))
            quantity, reserve = offer.stock[warehouse]
            offer.stock[warehouse] = (quantity + 10, reserve)
            tally.restocks += 1
            log.info("demo.restocked", sku=offer.sku, warehouse=warehouse, quantity=quantity + 10)
            continue
        in_stock = [o for o in offers if o.quantity >= 1] or offers
        lines = [(o, float(rng.choice((1, 1, 2)))) for o in rng.sample(in_stock, rng.randint(1, 2))]
        order = keycrm.orders.place(lines)
        tally.orders += 1
        log.info(
            "demo.order_placed",
            order=order.id,
            lines={o.sku: quantity for o, quantity in lines},
        )


async def _hand_edits(
    marketplacer: FakeMarketplacer, every: float, tally: Tally | None = None
) -> None:
    """Change a Marketplacer variant's stock in the "seller portal", as people do."""
    rng = random.Random(7)  # noqa: S311
    while True:
        await anyio.sleep(every)
        if not marketplacer.count_on_hand:
            continue
        variant = rng.choice(sorted(marketplacer.count_on_hand))
        before = marketplacer.count_on_hand[variant]
        after = max(0, before + rng.choice((-2, -1, 3, 8)))
        marketplacer.edit_by_hand(variant, after)
        if tally is not None:
            tally.hand_edits += 1
        log.info("demo.edited_by_hand", variant=variant, before=before, after=after)


def _folder(state_dir: Path | None) -> contextlib.AbstractContextManager[str]:
    """`--state-dir` (created, kept), or a temporary folder removed at exit."""
    if state_dir is None:
        return tempfile.TemporaryDirectory(prefix="stocksync-demo-")
    state_dir.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(state_dir))


def _admin_token_file(folder: Path) -> Path:
    """A fresh admin token in a file only this user can read, named by the demo's config."""
    path = folder / "admin-token"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secrets.token_urlsafe(16), encoding="utf-8")
    return path


def _first_sku(keycrm: FakeKeycrm) -> str:
    return min(o.sku for o in keycrm.offers.values() if o.sku)


def _free_port() -> int:
    """A port for the listener, chosen before the config is written so the file names it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _run_with_port_hint(daemon: Daemon) -> None:
    """The daemon, with a way out added when its port is taken: most often by a demo still
    running in another terminal."""
    try:
        await daemon.run()
    except* StartupError as failed:
        first = failed.exceptions[0]
        if "cannot listen" not in str(first):
            raise
        raise StartupError(
            f"{first} (another program holds it, often a demo still running: stop it, or "
            "run `stocksync demo --port 0` for any free port)"
        ) from first


async def run_demo(
    registry: dict[str, ChannelSpec],
    *,
    port: int = 9108,
    skus: int = 60,
    duration: float | None = None,
    state_dir: Path | None = None,
    out: TextIO = sys.stdout,
    heartbeat_every: float = HEARTBEAT,
) -> int:
    """Run the demo until Ctrl-C (or `duration` seconds); `state_dir` keeps its files."""
    tokens = {
        "STOCKSYNC_DEMO_KEYCRM_KEY": secrets.token_urlsafe(16),
        "STOCKSYNC_DEMO_POS_TOKEN": secrets.token_urlsafe(16),
        "STOCKSYNC_DEMO_KLUMP_KEY": secrets.token_urlsafe(16),
        "STOCKSYNC_DEMO_MARKETPLACER_KEY": secrets.token_urlsafe(16),
        "STOCKSYNC_DEMO_ORDERGROOVE_HASH_KEY": secrets.token_urlsafe(16),
    }
    os.environ.update(tokens)
    keycrm = FakeKeycrm(tokens["STOCKSYNC_DEMO_KEYCRM_KEY"], limit=600)
    keycrm.populate(skus, warehouses=(1, 2))
    pos = FakeInventoryApi(tokens["STOCKSYNC_DEMO_POS_TOKEN"])
    pos.on_update = lambda body: log.info("demo.pos_updated", **body)
    klump = FakeKlump(tokens["STOCKSYNC_DEMO_KLUMP_KEY"])
    klump.on_update = lambda body: log.info("demo.klump_updated", **body)
    marketplacer = FakeMarketplacer(tokens["STOCKSYNC_DEMO_MARKETPLACER_KEY"])
    marketplacer.on_update = lambda variant, count: log.info(
        "demo.marketplacer_updated", variant=variant, count_on_hand=count
    )
    ordergroove = FakeOrdergroove(tokens["STOCKSYNC_DEMO_ORDERGROOVE_HASH_KEY"])
    ordergroove.on_update = lambda product, live: log.info(
        "demo.ordergroove_updated", product_id=product, live=live
    )
    if port == 0:
        port = _free_port()
    with _folder(state_dir) as folder:
        admin_token = _admin_token_file(Path(folder))
        async with AsyncExitStack() as stack:
            keycrm_url = await _serve(stack, keycrm.app())
            urls = {
                "pos": await _serve(stack, pos.app()),
                "klump": await _serve(stack, klump.app()),
                "marketplacer": await _serve(stack, marketplacer.app()),
                "ordergroove": await _serve(stack, ordergroove.app()),
            }
            key_map = Path(folder) / "marketplacer-variants.csv"
            key_map.write_text(
                "sku,key\n"
                + "".join(f"{o.sku},{variant_id(o.id)}\n" for o in keycrm.offers.values()),
                encoding="utf-8",
            )
            path = Path(folder) / "stocksync.toml"
            path.write_text(
                _CONFIG.format(
                    state=Path(folder) / "stocksync.db",
                    port=port,
                    admin_token_file=admin_token,
                    keycrm=keycrm_url,
                    key_map=key_map,
                    og_public_id=ordergroove.public_id,
                    og_sig_field=ordergroove.sig_field,
                    **urls,
                ),
                encoding="utf-8",
            )
            secrets_env = Path(folder) / "secrets.env"  # for commands run from another shell
            secrets_env.touch(mode=0o600)
            secrets_env.write_text(
                "".join(f"export {name}={value}\n" for name, value in tokens.items()),
                encoding="utf-8",
            )
            config = load_config(path, registry)
            secret_texts = [*tokens.values(), admin_token.read_text(encoding="utf-8")]
            # The log to a file: on the terminal it would scroll the lines to copy away.
            log_path = Path(folder) / "demo.log"
            log_file = stack.enter_context(log_path.open("a", encoding="utf-8", buffering=1))
            configure_logging(fmt="console", level="info", secrets=secret_texts, stream=log_file)
            daemon = Daemon(config, reload=lambda: load_config(path, registry))
            async with anyio.create_task_group() as group:

                async def run_then_end_demo() -> None:
                    await _run_with_port_hint(daemon)
                    group.cancel_scope.cancel()  # the shop floor stops with the daemon

                group.start_soon(run_then_end_demo)
                await daemon.started.wait()
                base = f"http://127.0.0.1:{daemon.bound_port}"
                lines = (
                    f"stocksync demo: {skus} SKUs in a fake keyCRM ({keycrm_url}) and four fake "
                    f"channels: Inventory Update API ({urls['pos']}), Klump ({urls['klump']}), "
                    f"Marketplacer ({urls['marketplacer']}), Ordergroove ({urls['ordergroove']})\n"
                    f"  state file   {config.daemon.state}"
                    f"{'' if state_dir else ' (deleted at exit; --state-dir DIR keeps it)'}\n"
                    f"  config       {path}\n"
                    f"  log          {log_path}\n"
                    f"  stop         Ctrl-C (or kill -TERM {os.getpid()})\n\n"
                    + handoff(
                        Path(folder),
                        path,
                        base,
                        _first_sku(keycrm),
                        port=daemon.bound_port or port,
                        log=log_path,
                    )
                )
                print(lines, file=out, flush=True)
                tally = Tally()
                group.start_soon(_shop_floor, keycrm, 2.0, tally)
                group.start_soon(_hand_edits, marketplacer, 20.0, tally)
                group.start_soon(reprint_on_enter, lines, out)
                group.start_soon(heartbeat, tally, daemon.status, out, heartbeat_every)
                if duration is not None:
                    await anyio.sleep(duration)
                    daemon.stop()
    return 0
