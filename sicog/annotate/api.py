"""Chat completions through any OpenAI-compatible server, with our own retry policy.

The official ``openai`` client is built with ``max_retries=0`` so that the policy is ours and visible:
429, 408/409, 5xx, timeouts and connection errors are retried with exponential backoff (and the
server's ``Retry-After`` when it sends one); 401/403/404, a 429 for an account out of credit
(``insufficient_quota``) and no server at the address (connections that never open until the retries run out,
before any request was answered) mean the run cannot succeed and stop it; other 4xx fail the one request. The API
key is never logged and is masked in every error text.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from dataclasses import dataclass
from typing import Any

import openai

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o"
# Seconds the server may take to connect, and between the bytes of its reply.
DEFAULT_TIMEOUT = 120.0
# Placeholder key for servers that do not check one (a local vLLM started without --api-key).
NO_KEY = "EMPTY"
_FATAL_STATUS = {401, 403, 404}
_RETRY_STATUS = {408, 409, 429}
# OpenAI's 429 for an account without credit: no wait makes the next request succeed.
_FATAL_CODES = {"insufficient_quota"}
# The transport errors under a failed request that mean no server took it: refused, unknown host, an address without
# http://, a connection that never opened. Anything else (a connection dropped mid-request, a slow reply) reached one.
# Matched by name: the client's transport library is httpx or httpx2, by openai version.
_NO_SERVER = frozenset({"ConnectError", "ConnectTimeout", "UnsupportedProtocol"})
# Records whose every request was dropped, before any request was answered, that make the address no server: a
# listener that speaks no HTTP drops every one, while one record's dropped request (a server that failed on its
# image) must not stop a run that would otherwise go on.
DROPPED_RECORDS_FOR_NO_SERVER = 3


class FatalAPIError(RuntimeError):
    """The server rejects the configuration itself (key, permissions, model name): every request would fail."""


class Stopped(RuntimeError):
    """The run stopped (a fatal error in another request, Ctrl-C): a request still under way gives up."""


class RequestFailed(RuntimeError):
    """One request that failed for good (retries exhausted or a non-retryable status)."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before retrying a request."""

    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): doubling, jittered, capped."""
        # Jitter spreads concurrent workers that hit the same rate limit at the same moment.
        wait = min(self.max_backoff, self.backoff * 2**retry) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


@dataclass(frozen=True)
class ChatReply:
    """The assistant text of a completion, why it stopped, how many HTTP attempts it took, and a refusal."""

    text: str
    finish_reason: str | None
    attempts: int
    refusal: str | None = None  # the model's refusal message, where it gave one instead of text


def resolve_endpoint(base_url: str | None) -> tuple[str | None, str]:
    """``(base_url, api_key)`` from the flag or ``OPENAI_BASE_URL``, and ``OPENAI_API_KEY``.

    A custom base URL without a key gets a placeholder key (local servers often check none);
    the official endpoint without a key is a usage error.
    """
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = os.environ.get("OPENAI_API_KEY") or ""
    if not key:
        if url is None:
            raise FatalAPIError(
                "set OPENAI_API_KEY (or point --base-url / OPENAI_BASE_URL at a server that needs no key)"
            )
        key = NO_KEY
    return url, key


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    if secret and secret != NO_KEY:
        return text.replace(secret, "***")
    return text


def _no_server(err: openai.APIError) -> bool:
    """Whether the transport error under ``err`` says that no server took the request (:data:`_NO_SERVER`)."""
    return type(err.__cause__).__name__ in _NO_SERVER


def _retry_after(err: openai.APIStatusError) -> float | None:
    value = err.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _field(value: Any, name: str) -> Any:
    """``value``'s field ``name``: an attribute of a parsed object, or a key where a server's odd JSON left a dict."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _reply_of(response: Any, attempts: int) -> ChatReply | None:
    """The first choice's text of a completion (content parts joined, as some compatible servers send them), or
    None when ``response`` is not a completion."""
    choices = _field(response, "choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = _field(choice, "message")
    if message is None or isinstance(message, str):
        return None
    content, refusal = _field(message, "content"), _field(message, "refusal")
    if isinstance(content, list):
        content = "".join(text for text in (_field(part, "text") for part in content) if isinstance(text, str))
    if not isinstance(content, (str, type(None))) or not isinstance(refusal, (str, type(None))):
        return None
    return ChatReply(content or "", _field(choice, "finish_reason"), attempts, refusal or None)


class ChatAPI:
    """Send chat completions to one model, retrying per :class:`RetryPolicy`. Thread-safe."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        api_key: str,
        timeout: float = DEFAULT_TIMEOUT,
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.policy = policy
        self._key = api_key
        self._stopped = threading.Event()
        # Set once the server has answered anything: until then, a connection error may be a wrong address.
        self._answered = threading.Event()
        self._dropped_records = 0  # records given up on dropped connections while nothing was answered
        self._lock = threading.Lock()
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)

    def _dropped_record(self) -> str | None:
        """Count a record given up on dropped connections while nothing was answered; once
        :data:`DROPPED_RECORDS_FOR_NO_SERVER` have been, why the address is no server, else None."""
        with self._lock:
            self._dropped_records += 1
            records = self._dropped_records
        if records < DROPPED_RECORDS_FOR_NO_SERVER:
            return None
        return f"every request of {records} records, none answered: is it an HTTP server?"

    def stop(self) -> None:
        """Stop every request now, from any thread: the ones under way are cut off (their connections closed) and
        raise :class:`Stopped`, as does any later one, instead of waiting for a reply or retrying."""
        self._stopped.set()
        self._client.close()

    def redact(self, text: str) -> str:
        """``text`` with this client's API key masked (for anything the server sent back)."""
        return redact(text, self._key)

    def close(self) -> None:
        """Close the underlying HTTP connections."""
        self._client.close()

    def complete(self, messages: list[dict], *, label: str = "", **params: Any) -> ChatReply:
        """One completion of ``messages``; ``params`` go to ``chat.completions.create`` (temperature, ...).

        Raises :class:`RequestFailed` when the request fails for good and :class:`FatalAPIError`
        when no request can succeed with this configuration.
        """
        attempts = 0
        while True:
            attempts += 1
            unreachable = False  # this attempt found no server (refused, unknown host, an address without http://)
            dropped = False  # this attempt's connection closed without a reply
            if self._stopped.is_set():
                raise Stopped("the run stopped")
            try:
                response = self._client.chat.completions.create(model=self.model, messages=messages, **params)
            except openai.APIStatusError as err:
                self._answered.set()
                reason = redact(f"HTTP {err.status_code}: {err.message}", self._key)
                if err.status_code in _FATAL_STATUS or err.code in _FATAL_CODES:
                    raise FatalAPIError(f"{self.base_url or 'the OpenAI API'} refused the request: {reason}") from None
                if err.status_code not in _RETRY_STATUS and err.status_code < 500:
                    raise RequestFailed(reason, attempts) from None
                retry_after = _retry_after(err)
            except openai.APITimeoutError as err:
                reason, retry_after, unreachable = "request timed out", None, _no_server(err)
            except openai.APIConnectionError as err:
                # The cause says what failed (an address without http://, a refused connection, a DNS name).
                cause = f" ({err.__cause__})" if err.__cause__ else ""
                reason, retry_after = redact(f"connection error: {err}{cause}", self._key), None
                unreachable = _no_server(err)
                dropped = not unreachable
            except (openai.APIError, json.JSONDecodeError, UnicodeDecodeError) as err:
                # A body that is not JSON (a proxy's error page cut short, bytes that are not UTF-8): as transient as
                # a 502.
                reason, retry_after = redact(f"unusable response: {err}", self._key), None
            else:
                self._answered.set()
                reply = _reply_of(response, attempts)
                if reply is not None:
                    return reply
                # A 200 that is not a completion (an HTML page, an error object): also worth a retry.
                # Masked before it is cut: a key across the cut would keep its first part unmasked.
                reason, retry_after = f"not a chat completion: {redact(str(response), self._key)[:200]!r}", None
            if self._stopped.is_set():  # the failure is the cut connection, no reason to retry or report
                raise Stopped("the run stopped")
            if attempts > self.policy.max_retries:
                # No server there (none ever answered, or the one that did is gone: refused, no such host): every
                # record would fail the same way; stop, record nothing, and a rerun resumes. (A reply that times out
                # reached one: that record fails alone, as does one whose connections were dropped, until
                # DROPPED_RECORDS_FOR_NO_SERVER records have been and nothing was answered.)
                server = self.base_url or "the OpenAI API"
                if unreachable:
                    what = "stopped answering" if self._answered.is_set() else "never answered"
                    raise FatalAPIError(f"{server} {what}: {reason} (gave up after {attempts} attempts)")
                if dropped and not self._answered.is_set():
                    no_server = self._dropped_record()
                    if no_server and not self._answered.is_set():
                        raise FatalAPIError(f"{server} never answered: {reason} ({no_server})")
                raise RequestFailed(f"{reason} (gave up after {attempts} attempts)", attempts)
            wait = self.policy.delay(attempts - 1, retry_after)
            log.warning("%s%s; retry %d/%d in %.1fs", f"{label}: " if label else "", reason, attempts,
                        self.policy.max_retries, wait)
            if self._stopped.wait(wait):
                raise Stopped("the run stopped")
