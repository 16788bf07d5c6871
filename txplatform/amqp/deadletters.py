# -*- test-case-name: tests.amqp.test_deadletters -*-
"""
Dead letters: list them, look at one, send them back to their group.

    txplatform-deadletters --bus amqp://... [--timeout 10] list [--group notify]
    txplatform-deadletters --bus amqp://... [--bus-keys FILE] show MESSAGE_ID
    txplatform-deadletters --bus amqp://... replay MESSAGE_ID | --all
    txplatform-deadletters --bus amqp://... drop MESSAGE_ID

A group's dead letters wait in C{txplatform.dead.<group>} (a service's
malformed calls in group C{rpc.<service id>}), each with the error, the number of attempts and the queue it came from in its headers.
Looking does not consume them (they are taken and given back); replaying
publishes a message to the queue it came from, so only that group sees it
again, and removes it from the dead letters once the broker confirmed it.
Payloads sealed under the bus keys (as the platform's are) are shown only
given the key file (C{--bus-keys}): opened, and checked against the
letter's event, message id, caller and trace, as the consumer would.

A broker that cannot be reached or refuses us (wrong password, no such
vhost) is reported in one line within C{--timeout} seconds, exit status 1,
as is a C{--group} with no dead-letter queue there (which is not made);
a wrong command line is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Iterable

from attrs import frozen
from twisted.internet.defer import TimeoutError, inlineCallbacks
from twisted.internet.error import ConnectionLost
from txamqp.client import Closed

from ..busrules import decodePayload
from ..codec import eventBinding, loads
from ..commandline import FAILED, USAGE, OneLineParser, oneLine, positive, reactWithStatus
from ..errors import MalformedMessage
from ..interfaces import IPayloadCodec
from .bus import CHANNEL, AMQPBus, _callerOf, _isTraced, _traceOf, deadQueue
from .frames import Delivery, Properties
from .probe import BrokerUnreachable, probe
from .protocol import NotConnected, PublishNacked, PublishReturned
from .url import parseBrokerURLs

__all__ = ["DeadLetter", "browse", "replay", "drop", "main"]


def installedGroups() -> list[str]:
    """
    The consumer groups of the installed services' event handlers.
    """
    from ..catalogue import installedServices

    groups: list[str] = []
    for declaration in installedServices():
        for spec in declaration.serviceClass().eventHandlers():
            group = None if spec.private else spec.group or declaration.name
            if group is not None and group not in groups:
                groups.append(group)
    return groups


_OURS = (
    "x-error",
    "x-attempts",
    "x-original-queue",
    "x-original-routing-key",
    "x-dead-lettered-at",
)


@frozen
class DeadLetter:
    group: str
    messageId: str
    event: str
    queue: str
    error: str
    attempts: int
    deadLetteredAt: float | None
    body: bytes
    properties: Properties

    @classmethod
    def fromDelivery(cls, group: str, delivery: Delivery) -> DeadLetter:
        headers = delivery.properties.headers or {}
        at = headers.get("x-dead-lettered-at")
        return cls(
            group=group,
            messageId=delivery.properties.message_id or "",
            event=headers.get("x-original-routing-key", delivery.routingKey),
            queue=headers.get("x-original-queue", ""),
            error=headers.get("x-error", _brokerReason(headers)),
            attempts=headers.get("x-attempts", 0),
            deadLetteredAt=at / 1000 if isinstance(at, int) else None,
            body=delivery.body,
            properties=delivery.properties,
        )

    def payload(self, codec: IPayloadCodec | None = None) -> Any:
        """
        The decoded payload: opened by C{codec} (the bus keys' codec) if
        given; otherwise parsed as JSON, or the raw bytes if it is not.

        @raise txplatform.errors.MalformedMessage: C{codec} refused it.
        """
        headers = self.properties.headers or {}
        isTraced = _isTraced(headers)
        if codec is not None:
            binding = eventBinding(
                self.event,
                self.messageId,
                _callerOf(headers),
                _traceOf(headers, self.messageId),
                isTraced,
            )
            return decodePayload(codec, self.body, binding, isTraced)[0]
        try:
            payload = loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return self.body
        if isTraced and isinstance(payload, dict):
            return payload.get("payload", payload)
        return payload


def _brokerReason(headers: dict[str, Any]) -> str:
    # Dead-lettered by the broker itself (x-death), not by a consumer.
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return f"broker: {deaths[0].get('reason', 'unknown')}"
    return "unknown"


@inlineCallbacks
def _takeAll(bus: AMQPBus, group: str) -> Any:
    """
    Take every dead letter of C{group}, unacknowledged: C{(deliveries)}.
    """
    channel, protocol = bus._channel, bus._protocol
    yield channel.queue_declare(
        queue=deadQueue(group), durable=True, arguments=bus.queueArguments()
    )
    taken = []
    while True:
        delivery = yield protocol.get(CHANNEL, deadQueue(group))
        if delivery is None:
            return taken
        taken.append(delivery)


class _NoSuchGroup(Exception):
    """
    A group named on the command line has no dead-letter queue.
    """


@inlineCallbacks
def _mustExist(bus: AMQPBus, groups: Iterable[str]) -> Any:
    """
    Check that each of C{groups} has its dead-letter queue, without making
    it (a passive declare): a group named on the command line that has none
    is a typo, or one no consumer ever ran for, and declaring it would
    leave a queue behind on the broker.

    @raise _NoSuchGroup: For the first that has none.  (The broker closes
        the channel: the command ends there.)
    """
    for group in groups:
        try:
            yield bus._channel.queue_declare(queue=deadQueue(group), passive=True)
        except Closed as e:
            if _replyCode(e) == 404:
                raise _NoSuchGroup(group) from None
            raise


def _giveBack(bus: AMQPBus, deliveries: Iterable[Delivery]) -> None:
    for delivery in deliveries:
        bus._protocol.reject(CHANNEL, delivery.deliveryTag, requeue=True)


@inlineCallbacks
def browse(bus: AMQPBus, groups: Iterable[str]) -> Any:
    """
    Every dead letter of C{groups}, left in place.
    """
    found = []
    for group in groups:
        taken = yield _takeAll(bus, group)
        found += [DeadLetter.fromDelivery(group, d) for d in taken]
        _giveBack(bus, taken)
    return found


@inlineCallbacks
def _settle(
    bus: AMQPBus, groups: Iterable[str], pick: Callable[[DeadLetter], bool], send: bool
) -> Any:
    settled = []
    for group in groups:
        taken = yield _takeAll(bus, group)
        keep = []
        for delivery in taken:
            letter = DeadLetter.fromDelivery(group, delivery)
            if not pick(letter):
                keep.append(delivery)
                continue
            if send:
                if not letter.queue:
                    keep.append(delivery)
                    continue
                original = letter.properties
                headers = {k: v for k, v in (original.headers or {}).items() if k not in _OURS}
                # The event it is (the routing key is now the queue's name).
                headers["x-event"] = letter.event
                headers.pop("x-attempt", None)
                properties = Properties(
                    message_id=original.message_id or letter.messageId or "replayed",
                    delivery_mode=2,
                    timestamp=original.timestamp,
                    type=original.type,
                    headers=headers,
                )
                # Straight to the queue it came from: only its group sees it.
                # Mandatory: if that queue is gone, the letter stays here.
                try:
                    yield bus._protocol.publish(
                        CHANNEL,
                        "",
                        letter.queue,
                        properties,
                        letter.body,
                        mandatory=True,
                        confirm=True,
                    )
                except PublishReturned:
                    keep.append(delivery)
                    continue
            bus._protocol.ack(CHANNEL, delivery.deliveryTag)
            settled.append(letter)
        _giveBack(bus, keep)
    return settled


def replay(bus: AMQPBus, groups: Iterable[str], pick: Callable[[DeadLetter], bool]) -> Any:
    """
    Send the dead letters C{pick} chooses back to their queue; return them.
    """
    return _settle(bus, groups, pick, send=True)


def drop(bus: AMQPBus, groups: Iterable[str], pick: Callable[[DeadLetter], bool]) -> Any:
    """
    Delete the dead letters C{pick} chooses; return them.
    """
    return _settle(bus, groups, pick, send=False)


def _describe(letter: DeadLetter) -> str:
    when = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.deadLetteredAt))
        if letter.deadLetteredAt
        else "-"
    )
    return (
        f"{letter.messageId}  {letter.group:<10} {letter.event:<20} attempts={letter.attempts}"
        f"  at={when}  {letter.error}"
    )


def _showPayload(letter: DeadLetter, codec: IPayloadCodec | None) -> str:
    if codec is not None and not letter.group.startswith("rpc."):
        try:
            return json.dumps(letter.payload(codec), indent=2)
        except MalformedMessage as e:
            return f"(the bus keys do not open it: {e.message})"
    payload = letter.payload()
    if isinstance(payload, bytes):
        hint = "" if codec is not None else "; give --bus-keys to open a sealed payload"
        return f"({len(payload)} bytes, not JSON{hint})"
    return json.dumps(payload, indent=2)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="txplatform-deadletters", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--bus",
        required=True,
        help="amqp://user:password@host:5672/vhost, or @PATH for the first line of that file",
    )
    parser.add_argument(
        "--timeout",
        type=positive(float, "a positive number of seconds"),
        default=10.0,
        help="seconds to reach the broker and log in before giving up (default 10)",
    )
    parser.add_argument(
        "--bus-keys", help="the bus key file, to show payloads sealed under it (show)"
    )
    parser.add_argument(
        "--group",
        action="append",
        help="a consumer group (repeatable); by default those of every installed service",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the dead letters")
    show = commands.add_parser("show", help="show one dead letter, payload included")
    show.add_argument("message_id")
    again = commands.add_parser("replay", help="send dead letters back to their queue")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?")
    which.add_argument("--all", action="store_true")
    gone = commands.add_parser("drop", help="delete a dead letter for good")
    gone.add_argument("message_id")
    return parser


def _secret(value: str) -> str:
    """
    C{@PATH} stands for the first line of that file (a Docker or Kubernetes
    secret), as for the twistd commands: a password kept off the command
    line.

    @raise OSError: The file cannot be read (the message says which).
    """
    if not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            return f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise OSError(f"cannot read {value[1:]}: {getattr(e, 'strerror', None) or e}") from None


def _refuse(status: int, message: str) -> int:
    print(f"txplatform-deadletters: {oneLine(message)}", file=sys.stderr)
    return status


@inlineCallbacks
def _run(reactor: Any, argv: list[str], out: Any) -> Any:
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        urls = parseBrokerURLs(_secret(arguments.bus))
    except (OSError, ValueError) as e:
        return _refuse(USAGE, f"--bus: {e}")
    if arguments.group:
        groups = arguments.group
    else:
        from ..catalogue import CatalogueError

        try:
            groups = installedGroups()
        except CatalogueError as e:
            return _refuse(USAGE, str(e))
    codec = None
    if arguments.bus_keys is not None:
        from ..crypto.keyfile import KeyFileError
        from ..crypto.keys import loadKeys

        try:
            codec = loadKeys(arguments.bus_keys, reactor, "bus").payloadCodec()
        except KeyFileError as e:
            return _refuse(USAGE, f"--bus-keys: {e}")
    bus = AMQPBus(reactor, urls, connectionName="txplatform-deadletters")
    # The bus would retry quietly for ever: find out first, once, whether
    # the broker (one of a cluster's nodes) lets us in, and if not why.
    deadline = reactor.seconds() + arguments.timeout
    refusals = []
    for url in urls:
        try:
            yield probe(reactor, url, arguments.timeout, bus.clientProperties())
            break
        except BrokerUnreachable as e:
            refusals.append(str(e))
    else:
        return _refuse(FAILED, f"cannot use the broker at {'; nor at '.join(refusals)}")
    bus.startService()
    try:
        try:
            yield bus.whenConnected().addTimeout(max(deadline - reactor.seconds(), 1.0), reactor)
        except TimeoutError:
            # It let the probe in, then not the bus: gone meanwhile.
            return _refuse(
                FAILED, f"cannot use the broker at {url}: no connection within the timeout"
            )
        if arguments.group:
            yield _mustExist(bus, groups)
        return (yield _command(bus, arguments, groups, codec, out))
    except _NoSuchGroup as e:
        return _refuse(
            FAILED,
            f"--group {e.args[0]}: no such consumer group on this broker (none of its"
            " consumers ever ran here)",
        )
    except _LOST as e:
        return _refuse(FAILED, f"the broker connection failed: {_reason(e)}")
    finally:
        yield bus.stopService()


#: The broker went away, or closed the channel, while a command ran.
_LOST = (Closed, ConnectionLost, NotConnected, PublishNacked, TimeoutError)


def _replyCode(e: Closed) -> int | None:
    return getattr(e.args[0], "reply_code", None) if e.args else None


def _reason(e: BaseException) -> str:
    if isinstance(e, Closed) and _replyCode(e) is not None:
        return f"{_replyCode(e)} {e.args[0].reply_text}"
    return str(e) or type(e).__name__


@inlineCallbacks
def _command(bus: AMQPBus, arguments: Any, groups: list[str], codec: Any, out: Any) -> Any:
    if arguments.command == "list":
        letters = yield browse(bus, groups)
        for letter in letters:
            print(_describe(letter), file=out)
        print(f"{len(letters)} dead letter(s)", file=out)
        return 0
    wanted = getattr(arguments, "message_id", None)

    def pick(letter: DeadLetter) -> bool:
        return arguments.command == "replay" and arguments.all or letter.messageId == wanted

    if arguments.command == "show":
        letters = [letter for letter in (yield browse(bus, groups)) if pick(letter)]
        for letter in letters:
            print(_describe(letter), file=out)
            print(json.dumps(letter.properties.headers, indent=2, default=str), file=out)
            print(_showPayload(letter, codec), file=out)
    elif arguments.command == "replay":
        letters = yield replay(bus, groups, pick)
        print(f"replayed {len(letters)} dead letter(s)", file=out)
    else:
        letters = yield drop(bus, groups, pick)
        print(f"dropped {len(letters)} dead letter(s)", file=out)
    if not letters:
        return _refuse(FAILED, f"no dead letter {wanted}")
    return 0


def main(argv: list[str] | None = None) -> None:
    reactWithStatus(lambda reactor, arguments: _run(reactor, list(arguments), sys.stdout), argv)


if __name__ == "__main__":
    main()
