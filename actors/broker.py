"""The worker's Dramatiq broker: built from the settings, with the actors declared on it.

Each worker process (:mod:`actors.supervisor`) calls :func:`build_broker` once after it forks.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, ShutdownNotifications, TimeLimit

from actors.context import Context, ResourcesMiddleware
from actors.dead_letters import DeadLetterRecorder, reason_line
from actors.dramatiq_adapter import WakeableRedisBroker
from actors.errors import EnvelopeRejected, ItemRejected, PermanentFailure
from actors.metrics import ActorMetrics
from actors.reliability import SafeRetries, Sweeper
from daemon.config import Settings
from daemon.pipeline import STAGES, ArgumentInvalid, MessageItem, Outgoing, Stage
from daemon.store import journeys
from daemon.store.keys import NAMESPACE

log = logging.getLogger(__name__)

#: A stage's function: ``run(context, argument)``, in the module its table line names.
StageFunction = Callable[[Context, Any], None]

#: The longest an actor may run before TimeLimit interrupts it (then it is retried).
TIME_LIMIT_MS = 120_000
#: How long a stopping worker waits for its event loop (async handlers) to end.
LOOP_STOP_SECONDS = 5.0


class DaemonAsyncIO(AsyncIO):
    """Dramatiq's ``AsyncIO`` middleware, whose event-loop thread does not keep a process alive.

    Dramatiq's loop thread is not a daemon thread: a worker process asked to exit while the loop
    still ran (a second SIGTERM, an async handler blocking the loop) waited for it forever. Here the
    loop thread is a daemon, and stopping it waits at most :data:`LOOP_STOP_SECONDS`.
    """

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = EventLoopThread(self.logger)
        loop_thread.daemon = True
        loop_thread.start(timeout=1.0)
        set_event_loop_thread(loop_thread)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            return
        if loop_thread.loop.is_running():
            loop_thread.loop.call_soon_threadsafe(loop_thread.loop.stop)
        loop_thread.join(timeout=LOOP_STOP_SECONDS)
        if not loop_thread.is_alive():
            loop_thread.loop.close()
        set_event_loop_thread(None)


def build_broker(
    settings: Settings, redis_url: str, threads: int | None = None, broker_id: str | None = None
) -> RedisBroker:
    """A Redis broker with wapipe's middleware and every stage declared on it.

    ``threads`` is the worker threads of this process (for ``wapipe_worker_threads``);
    ``broker_id`` the id its consumers fetch and heartbeat under (given by the main process, which
    requeues what they fetched if this process dies; else Dramatiq draws one).
    """
    # Dramatiq's defaults minus AgeLimit, Callbacks and Pipelines, which wapipe does not use (stages
    # hand on by enqueueing the next message themselves, so an enqueue failure fails the stage).
    middleware = [
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        ActorMetrics(settings.worker_threads if threads is None else threads),
        DeadLetterRecorder(settings.trace_retention_hours * 3600),
        SafeRetries(
            max_retries=settings.retry_max,
            min_backoff=settings.retry_min_backoff_ms,
            max_backoff=settings.retry_max_backoff_ms,
        ),
        CurrentMessage(),
        Sweeper(
            settings.heartbeat_timeout_ms,
            settings.dlq_retention_days,
            settings.media_dir,
            settings.media_retention_days,
        ),
        DaemonAsyncIO(),
        resources := ResourcesMiddleware(settings, redis_url),
    ]
    broker = WakeableRedisBroker(
        broker_id=broker_id,
        url=redis_url,
        namespace=NAMESPACE,
        middleware=middleware,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        # No maintenance at random inside fetches and acks: the Sweeper runs it, and only once this
        # process has reached Redis long enough for every live process to have heartbeated again.
        maintenance_chance=0,
        # Dramatiq's own expiry only as a backstop: wapipe's purge (with its log line) comes first.
        dead_message_ttl=(settings.dlq_retention_days + 1) * 86_400_000,
    )
    dramatiq.set_broker(broker)
    for stage in STAGES:
        module = importlib.import_module(stage.module)
        declare = dramatiq.actor(
            actor_name=stage.name,
            queue_name=stage.queue,
            broker=broker,
            **stage_options(stage, settings, getattr(module, "RETRY_FOREVER", ())),
        )
        declare(actor_function(stage, module.run, resources))
    return broker


def actor_function(
    stage: Stage[Any], run: StageFunction, resources: ResourcesMiddleware
) -> Callable[..., None]:
    """The function Dramatiq calls for ``stage``: decode the message's argument, build the run's
    context, call the stage. An argument that is not the stage's is dead-lettered at once."""
    rejected = ItemRejected if stage.argument is MessageItem else EnvelopeRejected

    def perform(**kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()
        if resources.resources is None or message is None:
            raise RuntimeError(f"{stage.name} runs only inside a booted worker")
        try:
            argument = stage.decode(kwargs)
        except ArgumentInvalid as error:
            item = kwargs.get("item")
            envelope_id = item.get("envelope_id") if isinstance(item, dict) else kwargs.get("envelope_id")
            raise rejected(str(error), envelope_id=envelope_id) from None
        context = resources.resources.context(str(message.message_id), message.options)
        subject = argument.subject if isinstance(argument, MessageItem | Outgoing) else None
        if subject is None:
            run(context, argument)
            return
        attempt = context.retries + 1
        try:
            run(context, argument)
        except BaseException as error:
            _journal(context, subject, stage.name, attempt, error)
            _stopped(context, stage.name)
            raise
        if not context.journal.written:
            _journal(context, subject, stage.name, attempt, None)

    perform.__name__ = perform.__qualname__ = stage.name
    return perform


def _stopped(context: Context, stage: str) -> None:
    """A run that failed is no longer running in its user's order (it waits for its retry, or its
    dead letter takes it out): the user's next message stops waiting for it in a thread."""
    for number, user, message_id in context.running:
        try:
            context.store.order.stopped(number, user, message_id)
        except redis.RedisError as failure:  # the next message then waits in its thread, bounded
            log.warning("order_mark_not_cleared", extra={"actor": stage, "error": type(failure).__name__})


def _journal(context: Context, subject: str, stage: str, attempt: int, error: BaseException | None) -> None:
    """Add the run's end to the message's journey (:mod:`daemon.store.journeys`): ``done``, or
    ``failed`` (dead-lettered at once), or ``retry`` (it runs again, unless its retries are spent:
    then its dead letter says so), with the error's content-free line. Never fails the run."""
    fields = dict(context.journal.fields)
    if error is None:
        outcome = "done"
    else:
        outcome = "failed" if isinstance(error, PermanentFailure) else "retry"
        fields["error"] = reason_line(error)
        if isinstance(error, PermanentFailure) and error.details.get("code") is not None:
            fields["error"] = f"{type(error).__name__} code={error.details['code']}: {error}"[:300]
        if isinstance(error, dramatiq.Retry) and error.delay is not None:
            fields["delay_ms"] = error.delay
    try:
        context.store.journeys.add(subject, journeys.event(stage, outcome, attempt, **fields))
    except redis.RedisError as failure:
        log.warning("journey_not_recorded", extra={"actor": stage, "error": type(failure).__name__})


def stage_options(
    stage: Stage[Any], settings: Settings, forever: tuple[type[BaseException], ...] = ()
) -> dict[str, Any]:
    """A stage's Dramatiq options: the settings' retry policy, then the stage's own options.

    Every stage dead-letters a :class:`PermanentFailure` at once. ``forever`` lists exceptions
    (e.g. sending paused on a bad token) that never exhaust its retries.
    """
    options: dict[str, Any] = {
        "throws": (PermanentFailure,),
        "max_retries": settings.retry_max,
        "min_backoff": settings.retry_min_backoff_ms,
        "max_backoff": settings.retry_max_backoff_ms,
        **stage.options,
    }
    if forever:
        limit = int(options["max_retries"])
        options["retry_when"] = lambda retries, error: isinstance(error, forever) or retries < limit
    return options


def pin_to_one_cpu(policy: str, index: int) -> int | None:
    """With ``policy`` "spread", run this worker process on one CPU: the (index mod n)-th CPU it may
    use, ``index`` counting the worker processes of every ``wapipe worker`` on the host in turn (see
    :mod:`daemon.worker_metrics` on slots). Returns that CPU, or None when not pinned.

    A process's threads hand the GIL to one another for every message; on different cores each
    hand-off wakes another core (a costly inter-processor interrupt on virtual machines), on one
    core it does not. Measured on the 2-core benchmark machine: 30 % less CPU per message.
    Threads started before the call keep their affinity, so it runs before the worker's threads.
    """
    if policy != "spread" or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    cpu = cpus[index % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    return cpu
