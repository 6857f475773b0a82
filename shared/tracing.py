"""OpenTelemetry traces: one backup is one trace, from the coordinator through NATS to the
agent and its target writes.

- The W3C ``traceparent`` travels in NATS message headers (:func:`inject` when publishing
  in :mod:`shared.bus`, :func:`extract` when receiving a job or an event).
- Spans are started with :func:`span`. Without a configured provider they cost almost
  nothing: the OpenTelemetry API's no-op tracer records nothing and opens no connection,
  but still passes an incoming parent on, so an agent without tracing does not cut the
  trace of a coordinator with it.
- The provider is this module's own reference, never OpenTelemetry's process-global one
  (which can be set only once per process): an entry point calls :func:`setup_from_env`,
  a test calls :func:`install` with its own provider and puts the old one back.

Configuration is the standard ``OTEL_*`` variables, read by :func:`setup_from_env` only
(called by the daemons' entry point): ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (a full
``…/v1/traces`` URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL, ``/v1/traces`` is
appended) turn tracing on, exported over OTLP/HTTP (protobuf); ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` name the process; ``OTEL_TRACES_EXPORTER=none`` (or any
value without ``otlp``) or ``OTEL_SDK_DISABLED=true`` turn it off. Headers, TLS files,
timeout, compression and batching are read by the exporter and the batch processor
themselves (``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY`` …).

Span attributes hold names, sizes and ids only: never credentials, keys or paths with
secrets in them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)
_propagator = TraceContextTextMapPropagator()
_noop = trace.NoOpTracer()
_provider: trace.TracerProvider | None = None
_tracers: dict[str, Tracer] = {}

DEFAULT_SCOPE = "mosaic-backup"


def install(provider: trace.TracerProvider | None) -> trace.TracerProvider | None:
    """Make ``provider`` the one our spans go to (None: tracing off); return the previous
    one so a caller (a test) can put it back."""
    global _provider
    previous, _provider = _provider, provider
    _tracers.clear()
    return previous


def current_provider() -> trace.TracerProvider | None:
    return _provider


def _tracer(scope: str) -> Tracer:
    if _provider is None:
        return _noop
    tracer = _tracers.get(scope)
    if tracer is None:
        tracer = _tracers[scope] = _provider.get_tracer(scope)
    return tracer


@contextmanager
def span(
    name: str,
    *,
    scope: str = DEFAULT_SCOPE,
    context: Context | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A span made current for the ``with`` body; a child of ``context`` (from
    :func:`extract`) when given, else of the current span. An exception leaving the body
    is recorded on the span and marks it as an error."""
    with _tracer(scope).start_as_current_span(
        name, context=context, attributes=attributes
    ) as current:
        yield current


def mark_error(description: str) -> None:
    """Mark the current span failed, for a failure reported as a result (a JobFailed
    event) rather than raised."""
    trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, description))


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to NATS headers;
    nothing is added outside a span."""
    _propagator.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent carried by a received message's headers, or None."""
    if not headers or "traceparent" not in headers:
        return None
    return _propagator.extract(headers)


def ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, as Jaeger shows them, or None."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def _traces_endpoint(env: Mapping[str, str]) -> str | None:
    full = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if full:
        return full
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


def setup_from_env(env: Mapping[str, str], default_service: str) -> bool:
    """Install an OTLP/HTTP exporting provider if the ``OTEL_*`` variables ask for one.

    Returns whether tracing is on. Nothing is imported from the SDK, and nothing touches
    the network, unless an endpoint is configured.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")}
    if "otlp" not in exporters:
        if exporters - {"none", ""}:
            log.warning(
                "OTEL_TRACES_EXPORTER=%s: only 'otlp' (OTLP/HTTP) is supported; tracing is off",
                env["OTEL_TRACES_EXPORTER"],
            )
        return False
    endpoint = _traces_endpoint(env)
    if endpoint is None:
        return False

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself; the
    # role's name is only the fallback.
    resource = Resource.create({SERVICE_NAME: default_service})
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource = resource.merge(Resource({SERVICE_NAME: env["OTEL_SERVICE_NAME"].strip()}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    return True


def shutdown() -> None:
    """Flush and stop the installed provider (at process exit); tracing is off after."""
    provider = install(None)
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()
