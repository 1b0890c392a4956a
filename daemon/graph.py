"""The one Graph API client of a worker process: pooled keep-alive connections, bearer token,
retries. Its calls block; Dramatiq's worker threads make them (see :mod:`daemon.http_pool` for why
not aiohttp).

``stamina`` retries, in-process and briefly, only what cannot have been delivered: a connection
that could not be made, or an answer of 5xx / 429. A send that may have reached Meta (a timeout
or a dropped connection after the request went out) raises :class:`SendOutcomeUnknown` and is
never retried here. Meta's error codes are classified as docs/whatsapp.md, *Error codes*, says.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urljoin, urlsplit

from daemon import messages, retrying
from daemon.config import Settings
from daemon.http_pool import ConnectFailed, HTTPPool
from daemon.sandbox_link import (
    IN_REPLY_TO_HEADER,
    PROOF_HEADER,
    EmulatorLink,
    EmulatorNotFound,
    EmulatorRecord,
    proof,
)
from daemon.store.media import TempFile, host_allowed

log = logging.getLogger(__name__)

#: Called after every request with (endpoint, result, seconds).
Observer = Callable[[str, str, float], None]
#: stamina's ``on=``: whether (True, or a back-off in seconds) or not (False) to retry an error
#: (any exception an attempt raised: :data:`daemon.retrying.On`).
RetryHook = Callable[[BaseException], bool | float]
T = TypeVar("T")

#: Longest ``Retry-After`` honoured inside one attempt (longer waits go back to the queue).
RETRY_AFTER_CAP_SECONDS = 5.0

#: Codes worth retrying soon (transient on Meta's side).
RETRY_SOON_CODES = frozenset({1, 2, 131000, 131016, 133004, 2494100})
#: Codes worth retrying later (throttling or a time-based block).
RETRY_LATER_CODES = frozenset(
    {4, 80007, 130429, 131048, 131049, 131056, 131057, 131064, 132069, 133008, 133009, 133015, 133016}
)
#: Codes that mean the access token is bad: sending pauses, nothing is dead-lettered for it.
AUTH_CODES = frozenset({0, 190})
#: Codes that are permanent even when they come with a server error status.
KNOWN_PERMANENT_CODES = frozenset({3, 10, 33, 100, 131045, 133000})
#: Every code Meta documents for the Cloud API (metrics count others as "other").
DOCUMENTED_CODES = frozenset(
    {
        0, 1, 2, 3, 4, 10, 33, 100, 190, 200, 368, 80007, 130403, 130429, 130472, 130497, 131000,
        131005, 131008, 131009, 131016, 131021, 131026, 131031, 131037, 131042, 131045, 131047,
        131048, 131049, 131050, 131051, 131052, 131053, 131056, 131057, 131060, 131062, 131063,
        131064, 132000, 132001, 132005, 132007, 132012, 132015, 132016, 132018, 132068, 132069,
        133000, 133004, 133005, 133006, 133008, 133009, 133010, 133015, 133016, 134011, 135000,
        2494100,
    }
)  # fmt: skip


class GraphError(Exception):
    """The Graph API answered with an error object."""

    def __init__(
        self,
        http_status: int,
        code: int | None,
        message: str,
        details: str | None = None,
        fbtrace_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {http_status}, code {code}: {message}")
        self.http_status = http_status
        self.code = code
        self.message = message
        self.details = details
        self.fbtrace_id = fbtrace_id
        self.retry_after = retry_after

    @property
    def kind(self) -> str:
        """``auth``, ``retry_soon``, ``retry_later`` or ``permanent``."""
        if self.code in AUTH_CODES:
            return "auth"
        if self.code in RETRY_SOON_CODES:
            return "retry_soon"
        if self.code in RETRY_LATER_CODES or self.http_status == 429:
            return "retry_later"
        if self.http_status >= 500 and self.code not in KNOWN_PERMANENT_CODES:
            return "retry_soon"  # an unknown code on a server error: transient until proven otherwise
        return "permanent"

    @property
    def transient(self) -> bool:
        """True when the request cannot have had an effect and may be repeated at once."""
        return self.http_status >= 500 or self.http_status == 429

    def reason(self) -> dict[str, Any]:
        return {
            "type": "GraphError",
            "message": self.message,
            "http_status": self.http_status,
            "code": self.code,
            "details": self.details,
            "fbtrace_id": self.fbtrace_id,
        }


class GraphUnreachable(Exception):
    """No connection to the Graph API could be made: nothing was sent."""


class SendOutcomeUnknown(Exception):
    """The request went out but no usable answer came back: it may or may not have taken effect.

    That is a timeout or a dropped connection after sending, and any answer that is neither an
    error nor a readable success: a 2xx whose body is not a JSON object, a 1xx or 3xx to a POST.
    """


class AnswerCut(SendOutcomeUnknown):
    """The answer stopped before its announced end (a cut download): retried, never stored."""


class DownloadTooSlow(SendOutcomeUnknown):
    """A download's average rate stayed under ``WAPIPE_MEDIA_MIN_BYTES_PER_SECOND``: abandoned."""


class RequestInvalid(Exception):
    """The request could not be made at all (an invalid URL): nothing was sent, and retrying the
    same request cannot help."""


class MediaExpired(Exception):
    """The media URL answered 404: URLs live 5 minutes, ask the Graph API for a fresh one."""


class MediaRefused(Exception):
    """The download cannot succeed: a host not in ``WHATSAPP_MEDIA_HOSTS``, or a file over the cap."""


#: Redirects followed on a download, each to a host in ``WHATSAPP_MEDIA_HOSTS``.
MAX_REDIRECTS = 3
#: How long a download runs before its average rate is held to the floor.
RATE_GRACE_SECONDS = 10.0
#: The most of a Graph API answer read (a send's answer is a few hundred bytes).
ANSWER_LIMIT = 1_048_576
DOWNLOAD_CHUNK = 65_536
#: The most of an error answer's body read to find the Graph error object in it.
ERROR_BODY_LIMIT = 65_536
USER_AGENT = "wapipe/0.1"


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where Graph calls go and with what token; which media URLs may be fetched with that token.

    In production: ``WHATSAPP_GRAPH_URL``, the access token and ``WHATSAPP_MEDIA_HOSTS``. In sandbox
    mode: the deployment's emulator (found through Redis), its token, media from its own origin only,
    and every answer must carry its proof header.
    """

    base: str
    token: str
    media_hosts: tuple[str, ...] = ()
    media_origin: str | None = None
    proof: str | None = None

    def media_allowed(self, url: str) -> bool:
        if self.media_origin is not None:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}" == self.media_origin
        return host_allowed(url, self.media_hosts)


def meta_endpoint(settings: Settings) -> Endpoint:
    """Production: Meta's Graph API (or ``WHATSAPP_GRAPH_URL``) with the access token."""
    assert settings.access_token is not None, "sandbox mode has no fixed endpoint"
    return Endpoint(
        base=settings.graph_base, token=settings.access_token.get(), media_hosts=settings.media_hosts
    )


def emulator_endpoint(link: EmulatorLink, api_version: str) -> Callable[[], Endpoint]:
    """Sandbox mode: the emulator of this deployment, as recorded in Redis and verified.

    A missing or unproven emulator is :class:`GraphUnreachable`: nothing was sent, try again later.
    """

    made: dict[EmulatorRecord, Endpoint] = {}

    def current() -> Endpoint:
        try:
            record = link.current()
        except EmulatorNotFound as error:
            raise GraphUnreachable(str(error)) from None
        endpoint = made.get(record)
        if endpoint is None:
            made.clear()  # one emulator at a time: a new record replaces the old one's endpoint
            endpoint = made[record] = Endpoint(
                base=f"{record.graph_url}/{api_version}",
                token=record.token,
                media_origin=record.web_url,
                proof=proof(record.token),
            )
        return endpoint

    return current


def _retry_hook(error: BaseException) -> bool | float:
    """stamina's ``on=``: retry unreachable and 5xx/429, honouring a clamped ``Retry-After``."""
    if isinstance(error, GraphUnreachable):
        return True
    if isinstance(error, GraphError) and error.transient:
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), RETRY_AFTER_CAP_SECONDS)
        return True
    return False


def _read_retry_hook(error: BaseException) -> bool | float:
    """For reads (idempotent GETs) a timeout or a dropped connection is retried too."""
    if isinstance(error, SendOutcomeUnknown):
        return True
    return _retry_hook(error)


class GraphClient:
    """Calls to ``{WHATSAPP_GRAPH_URL}/{WHATSAPP_API_VERSION}`` (or the sandbox emulator) from worker
    threads; owns its pool.

    Args:
        endpoint: where calls go, asked before each request (default: :func:`meta_endpoint`).
    """

    def __init__(
        self,
        settings: Settings,
        observe: Observer | None = None,
        endpoint: Callable[[], Endpoint] | None = None,
    ) -> None:
        self.pool = HTTPPool(timeout=settings.graph_timeout_seconds, headers={"User-Agent": USER_AGENT})
        self._observe = observe
        if endpoint is None:
            fixed = meta_endpoint(settings)

            def endpoint() -> Endpoint:
                return fixed

        self.endpoint: Callable[[], Endpoint] = endpoint
        self._attempts = settings.graph_attempts
        self._min_rate = settings.media_min_bytes_per_second

    def close(self) -> None:
        self.pool.close()

    def media_allowed(self, url: str) -> bool:
        """Whether the bearer token may go to ``url`` (``WHATSAPP_MEDIA_HOSTS``, or the emulator).

        Raises:
            GraphUnreachable: sandbox mode, and the emulator cannot be found now.
        """
        return self.endpoint().media_allowed(url)

    def send_message(
        self, phone_number_id: str, body: dict[str, Any], *, in_reply_to: str | None = None
    ) -> SendResult:
        """``POST /{phone_number_id}/messages``; returns the new message id.

        ``in_reply_to`` (the inbound message id) is passed to the sandbox emulator, for its outbox.

        Raises:
            GraphError: Meta refused it (after brief retries of 5xx / 429).
            GraphUnreachable: no connection could be made (after brief retries).
            SendOutcomeUnknown: it may have been sent; do not resend blindly.
        """
        data = self._retrying(
            _retry_hook,
            "send",
            "POST",
            f"/{_segment(phone_number_id)}/messages",
            body,
            in_reply_to=in_reply_to,
        )
        messages = data.get("messages")
        message_id = messages[0].get("id") if isinstance(messages, list) and messages else None
        return SendResult(message_id=message_id, body=data)

    def mark_read(self, phone_number_id: str, message_id: str, *, typing_indicator: bool = False) -> None:
        """Mark an inbound message read (idempotent on Meta's side); with ``typing_indicator``, the
        user sees "typing…" until the reply or for 25 s."""
        body = messages.mark_read(message_id, typing_indicator=typing_indicator)
        self._retrying(_retry_hook, "mark_read", "POST", f"/{_segment(phone_number_id)}/messages", body)

    def upload_media(self, phone_number_id: str, content: bytes, mime_type: str, filename: str) -> str:
        """``POST /{phone_number_id}/media`` (multipart: ``messaging_product``, ``type``, ``file``);
        returns the new media id. An upload may be repeated: at worst Meta keeps a second copy.

        Raises:
            GraphError: Meta refused it (131053: a type or size it does not take), after brief
                retries of 5xx / 429.
            GraphUnreachable: no connection could be made, or the answer was lost (after brief
                retries): upload again later.
        """
        boundary = f"wapipe-{secrets.token_hex(16)}"
        safe_name = filename.replace('"', "").replace("\r", "").replace("\n", "") or "file"
        fields = (("messaging_product", "whatsapp"), ("type", mime_type))
        head = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
            f"Content-Type: {mime_type}\r\n\r\n"
        )
        payload = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
        try:
            data = self._retrying(
                _read_retry_hook,
                "media_upload",
                "POST",
                f"/{_segment(phone_number_id)}/media",
                None,
                raw=(payload, f"multipart/form-data; boundary={boundary}"),
            )
        except SendOutcomeUnknown as error:
            raise GraphUnreachable(f"the upload's answer was lost: {error}") from None
        media_id = data.get("id")
        if not isinstance(media_id, str | int) or not str(media_id):
            raise GraphUnreachable("the upload's answer has no media id")
        return str(media_id)

    def media_info(self, media_id: str, phone_number_id: str | None = None) -> dict[str, Any]:
        """``GET /{media_id}``: url, mime_type, sha256, file_size."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        return self._retrying(_read_retry_hook, "media_info", "GET", f"/{_segment(media_id)}", None, params)

    def download(self, url: str, sink: TempFile, *, max_bytes: int) -> str | None:
        """Stream ``url`` into ``sink`` with the bearer token; return the Content-Type.

        The token only goes where :meth:`media_allowed` says; redirects are followed only there.

        Raises:
            MediaRefused: a host not allowed, or more than ``max_bytes`` (stopped while streaming).
            MediaExpired: 404 on the URL.
            RequestInvalid: the URL cannot be requested at all.
            AnswerCut: the connection closed before the announced length (after brief retries).
            DownloadTooSlow: slower than ``WAPIPE_MEDIA_MIN_BYTES_PER_SECOND`` on average once it
                ran :data:`RATE_GRACE_SECONDS` (after brief retries).
            GraphError / GraphUnreachable / SendOutcomeUnknown: after brief retries.
        """

        def attempt() -> str | None:
            sink.reset()
            with self._observing("media_download"):
                return self._download_once(url, sink, max_bytes)

        return self._with_retries(_read_retry_hook, attempt)

    def _download_once(self, url: str, sink: TempFile, max_bytes: int) -> str | None:
        endpoint = self.endpoint()
        for _ in range(MAX_REDIRECTS + 1):
            if not endpoint.media_allowed(url):
                raise MediaRefused("media host is not in WHATSAPP_MEDIA_HOSTS")
            with (
                _network_errors("downloading"),
                self.pool.request("GET", url, headers=_auth(endpoint)) as response,
            ):
                _check_proof(endpoint, response)
                location = response.getheader("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    url = urljoin(url, location)
                    continue
                if response.status == 404:
                    raise MediaExpired("the media URL answered 404")
                if response.status >= 400:
                    raise _graph_error(response, _json_or_none(response.read(ERROR_BODY_LIMIT)))
                if response.length is not None and response.length > max_bytes:
                    raise MediaRefused(f"media is {response.length} bytes, over WAPIPE_MEDIA_MAX_BYTES")
                self._stream(response, sink, max_bytes)
                return response.getheader("Content-Type")
        raise MediaRefused("too many redirects")

    def _stream(self, response: http.client.HTTPResponse, sink: TempFile, max_bytes: int) -> None:
        """Copy the body into ``sink`` as it arrives (one read at a time, so that a drip is seen),
        holding it to the size cap, the rate floor and its announced length."""
        started = time.monotonic()
        while chunk := response.read1(DOWNLOAD_CHUNK):
            if sink.size + len(chunk) > max_bytes:
                raise MediaRefused("media is over WAPIPE_MEDIA_MAX_BYTES (stopped while streaming)")
            with _not_network():
                sink.write(chunk)
            elapsed = time.monotonic() - started
            if elapsed > RATE_GRACE_SECONDS and sink.size < self._min_rate * elapsed:
                raise DownloadTooSlow(
                    f"{sink.size} bytes in {elapsed:.0f} s, under WAPIPE_MEDIA_MIN_BYTES_PER_SECOND"
                )
        if response.length:  # http.client counts down what Content-Length announced
            raise AnswerCut(f"the download stopped after {sink.size} bytes, {response.length} short")

    def _with_retries(self, hook: RetryHook, attempt: Callable[[], T]) -> T:
        """``attempt()`` under stamina's brief in-process retries: ``WAPIPE_GRAPH_ATTEMPTS``
        attempts, 0.1–2 s apart, on the errors ``hook`` accepts (the first attempt before
        stamina's context is built: :mod:`daemon.retrying`)."""
        return retrying.call(
            attempt,
            on=hook,
            attempts=self._attempts,
            timeout=None,
            wait_initial=0.1,
            wait_max=2.0,
            wait_jitter=0.2,
        )

    @contextlib.contextmanager
    def _observing(self, endpoint: str) -> Iterator[None]:
        """Time one request and count its result for ``wapipe_graph_*``."""
        started = time.perf_counter()
        result = "ok"
        try:
            yield
        except GraphError as error:
            result = _result_of(error)
            raise
        except GraphUnreachable:
            result = "unreachable"
            raise
        except SendOutcomeUnknown:
            result = "timeout"
            raise
        except (MediaRefused, MediaExpired, RequestInvalid):
            result = "client_error"
            raise
        finally:
            if self._observe is not None:
                self._observe(endpoint, result, time.perf_counter() - started)

    def _retrying(
        self,
        hook: RetryHook,
        endpoint: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        params: dict[str, str] | None = None,
        in_reply_to: str | None = None,
        raw: tuple[bytes, str] | None = None,
    ) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            with self._observing(endpoint):
                return self._request(method, path, body, params, in_reply_to, raw)

        return self._with_retries(hook, attempt)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        params: dict[str, str] | None,
        in_reply_to: str | None = None,
        raw: tuple[bytes, str] | None = None,
    ) -> dict[str, Any]:
        """One request with a JSON ``body``, or ``raw`` (its bytes and Content-Type)."""
        endpoint = self.endpoint()
        url = endpoint.base + path + (f"?{urlencode(params)}" if params else "")
        headers = _auth(endpoint)
        if in_reply_to is not None and endpoint.proof is not None:
            headers[IN_REPLY_TO_HEADER] = in_reply_to
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            payload, headers["Content-Type"] = raw
        with (
            _network_errors("after the request was sent"),
            self.pool.request(method, url, body=payload, headers=headers) as response,
        ):
            _check_proof(endpoint, response)
            data = _json_or_none(response.read(ANSWER_LIMIT))
        if response.status >= 400:
            raise _graph_error(response, data)
        if not 200 <= response.status < 300 or not isinstance(data, dict):
            # Not an error and not a readable success: for a send, it may have been delivered.
            raise SendOutcomeUnknown(f"HTTP {response.status} answer without a JSON object")
        return data


def _auth(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.token}"}


def _check_proof(endpoint: Endpoint, response: http.client.HTTPResponse) -> None:
    """In sandbox mode, an answer without the emulator's proof came from another program: to the
    sandbox nothing was delivered (only the emulator's outbox counts), so it is unreachable."""
    if endpoint.proof is not None and response.getheader(PROOF_HEADER) != endpoint.proof:
        raise GraphUnreachable("the sandbox emulator's address answered without its proof (another program?)")


class _NotNetwork(Exception):
    """Carries an error of local origin (e.g. writing the media file) past :func:`_network_errors`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


@contextlib.contextmanager
def _not_network() -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise _NotNetwork(error) from error


@contextlib.contextmanager
def _network_errors(when: str) -> Iterator[None]:
    """Map the pool's errors: no connection → :class:`GraphUnreachable`; anything after the
    request began to go out → :class:`SendOutcomeUnknown` (it may have taken effect)."""
    try:
        yield
    except _NotNetwork as wrapped:
        raise wrapped.error from None
    except ConnectFailed as error:
        raise GraphUnreachable(f"{error} (Graph API or media host)") from None
    except (http.client.InvalidURL, ValueError) as error:
        # Raised before anything is sent (http.client validates the URL first).
        raise RequestInvalid(f"{type(error).__name__}: the request cannot be made") from None
    except (OSError, http.client.HTTPException) as error:
        raise SendOutcomeUnknown(f"{type(error).__name__} {when}") from None


def _segment(value: str) -> str:
    """``value`` as one path segment: an id from a webhook can never reach another path."""
    return quote(str(value), safe="")


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _result_of(error: GraphError) -> str:
    if error.kind == "auth":
        return "auth"
    if error.http_status == 429 or error.kind == "retry_later":
        return "throttled"
    return "server_error" if error.http_status >= 500 else "client_error"


def _graph_error(response: http.client.HTTPResponse, data: object) -> GraphError:
    retry_after = _retry_after(response.getheader("Retry-After"))
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return GraphError(
            response.status, None, f"unexpected answer ({response.reason})", retry_after=retry_after
        )
    error_data = error.get("error_data")
    if not isinstance(error_data, dict):
        error_data = {}
    code = error.get("code")
    return GraphError(
        http_status=response.status,
        code=code if isinstance(code, int) else None,
        message=str(error.get("message", ""))[:500],
        details=str(error_data.get("details"))[:1000] if error_data.get("details") else None,
        fbtrace_id=error.get("fbtrace_id"),
        retry_after=retry_after,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
