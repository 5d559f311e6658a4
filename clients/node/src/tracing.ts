// Trace context propagation: when the application uses OpenTelemetry (the
// optional peer dependency @opentelemetry/api is installed and set up), every
// call to the sidecar carries the caller's context (W3C `traceparent`, or
// whatever the globally configured propagator writes), so the sidecar's
// spans and the upstream calls it makes (ExecuteCall, saga compensations)
// sit in the application's trace. Without the package nothing is sent.

import type { Interceptor } from "@connectrpc/connect";

// Only the few functions used here, so that no type of the optional
// package appears in this package's declarations.
interface OtelApi {
  context: { active(): unknown };
  propagation: { inject(ctx: unknown, carrier: Headers, setter: { set(carrier: Headers, key: string, value: string): void }): void };
}

let api: OtelApi | null | undefined;
let loading: Promise<OtelApi | null> | undefined;

function load(): Promise<OtelApi | null> {
  loading ??= import("@opentelemetry/api").then(
    (m) => (api = m as unknown as OtelApi),
    () => (api = null), // not installed: no tracing
  );
  return loading;
}

const setter = { set: (h: Headers, k: string, v: string) => h.set(k, v) };

/**
 * A Connect interceptor that injects the active OpenTelemetry context into
 * the request headers with the global propagator (a no-op until the
 * application's SDK configures one, e.g. W3C trace context).
 */
export function traceContextInterceptor(): Interceptor {
  void load();
  return (next) => async (req) => {
    const otel = api === undefined ? await load() : api;
    if (otel) otel.propagation.inject(otel.context.active(), req.header, setter);
    return next(req);
  };
}
