"""The durable inbox: direct messages pulled from the agent's own JetStream consumer.

For each message, in order:

1. its id was handled before (a redelivery whose acknowledgement was lost): acknowledge,
   count a duplicate, do not handle it again;
2. open the envelope (signature, addressing, decryption) judging its timestamp against
   the time the broker *stored* it, so a message that waited in the inbox while its
   recipient was away is not stale; an envelope that fails is reported to the router
   (audit and dead letter) and acknowledged, so it is not delivered again;
3. run the handler; if it raises, the message is given back (``nak`` with a growing
   delay) and delivered again, up to ``[messaging].inbox_max_deliver`` times, after which
   the router keeps it as a dead letter (UNDELIVERABLE);
4. mark the id handled, then acknowledge.

``stop()`` lets the message being handled finish and gives back the ones fetched but
not yet handled, so a restarted consumer gets them at once, none lost and none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from symbi_common import envelope, subjects
from symbi_common.envelope import EnvelopeRejected
from symbi_common.errors import SymbiError

if TYPE_CHECKING:
    from symbi_common.bus.client import AgentBus, Handler

log = logging.getLogger(__name__)

FETCH_WAIT_S = 0.5
NAK_DELAYS_S = (0.5, 2.0, 5.0, 15.0)


class InboxConsumer:
    def __init__(
        self, bus: AgentBus, handler: Handler, *, batch: int = 16, retry_delays_s: tuple[float, ...] = NAK_DELAYS_S
    ) -> None:
        self.bus = bus
        self.handler = handler
        self.batch = batch
        self.retry_delays_s = retry_delays_s or (0.0,)
        self.handled = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        js = self.bus.nc.jetstream(timeout=self.bus.request_timeout_s)
        self._sub = await js.pull_subscribe_bind(
            durable=subjects.inbox_consumer(self.bus.agent_id), stream=subjects.INBOX_STREAM
        )
        self._task = asyncio.create_task(self._loop(), name=f"inbox {self.bus.agent_id}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        sub = self._sub
        self._sub = None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _loop(self) -> None:
        sub = self._sub
        assert sub is not None
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=FETCH_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except Exception as exc:  # connection trouble: wait a little and pull again
                if self._stop.is_set():
                    break
                log.warning("inbox of %s: fetch failed: %r", self.bus.agent_id, exc)
                await asyncio.sleep(FETCH_WAIT_S)
                continue
            for index, msg in enumerate(msgs):
                if self._stop.is_set():
                    await _give_back(msgs[index:])
                    break
                try:
                    await self._one(msg)
                except Exception:  # never lose the loop to one message
                    log.exception("inbox of %s: message not handled", self.bus.agent_id)
                    await _nak(msg, 0)

    async def _one(self, msg: Msg) -> None:
        meta = msg.metadata
        try:
            message = envelope.parse_wire(msg.data, self.bus.settings.max_payload_bytes)
        except EnvelopeRejected as exc:
            await self.bus.refused(exc, msg.data)
            await msg.ack()  # reported to the router, which keeps it as a dead letter
            return
        if await self.bus.processed.done(message.header.message_id):
            self.bus.stats.duplicates += 1
            await msg.ack()
            return
        stored = meta.timestamp.timestamp() if meta.timestamp is not None else None
        opened = await self.bus.open_received(message, msg.data, now=stored, replay=False)
        if opened is None:
            await msg.ack()  # reported to the router, which keeps it as a dead letter
            return
        try:
            await self.handler(opened)
        except Exception as exc:
            self.failed += 1
            attempt = meta.num_delivered or 1
            log.warning("inbox of %s: handler failed on delivery %d: %r", self.bus.agent_id, attempt, exc)
            await _nak(msg, self.retry_delays_s[min(attempt, len(self.retry_delays_s)) - 1])
            return
        try:
            await self.bus.processed.mark(opened.header.message_id)
        except SymbiError as exc:  # not recorded: acknowledge anyway; only a lost ack could now repeat it
            log.warning("inbox of %s: %s", self.bus.agent_id, exc)
        self.handled += 1
        await msg.ack()


async def _nak(msg: Msg, delay: float) -> None:
    try:
        await msg.nak(delay=delay or None)
    except Exception as exc:
        log.debug("nak failed (the broker redelivers after ack_wait): %r", exc)


async def _give_back(msgs: list[Msg]) -> None:
    for msg in msgs:
        await _nak(msg, 0)
