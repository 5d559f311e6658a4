package io.github.seeda88e5317.resilience;

import io.github.seeda88e5317.resilience.v1.BreakerState;
import io.github.seeda88e5317.resilience.v1.ExecuteCallResponse;
import io.github.seeda88e5317.resilience.v1.HttpHeader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The upstream's answer to {@link ResilienceClient#executeCall}: an HTTP response of any status is
 * a result, not an exception.
 */
public final class UpstreamResponse {
  private final int status;
  private final Map<String, List<String>> headers;
  private final byte[] body;
  private final int attempts;
  private final BreakerState breakerState;

  private UpstreamResponse(
      int status,
      Map<String, List<String>> headers,
      byte[] body,
      int attempts,
      BreakerState breakerState) {
    this.status = status;
    this.headers = headers;
    this.body = body;
    this.attempts = attempts;
    this.breakerState = breakerState;
  }

  static UpstreamResponse of(ExecuteCallResponse r) {
    Map<String, List<String>> h = new LinkedHashMap<>();
    for (HttpHeader x : r.getHeadersList()) {
      h.computeIfAbsent(x.getName().toLowerCase(Locale.ROOT), k -> new ArrayList<>())
          .add(x.getValue());
    }
    h.replaceAll((k, v) -> List.copyOf(v));
    return new UpstreamResponse(
        r.getStatus(),
        Collections.unmodifiableMap(h),
        r.getBody().toByteArray(),
        r.getAttempts(),
        r.getBreakerState());
  }

  /** The HTTP status of the last attempt. */
  public int status() {
    return status;
  }

  /** The headers, by lower-case name. Unmodifiable. */
  public Map<String, List<String>> headers() {
    return headers;
  }

  /** The first value of header {@code name} (any case), or null. */
  public String header(String name) {
    List<String> v = headers.get(name.toLowerCase(Locale.ROOT));
    return v == null || v.isEmpty() ? null : v.get(0);
  }

  /** The body (a copy). */
  public byte[] body() {
    return body.clone();
  }

  /** The body as UTF-8 text. */
  public String bodyAsString() {
    return new String(body, StandardCharsets.UTF_8);
  }

  /** Attempts made, 1 or more. */
  public int attempts() {
    return attempts;
  }

  /** The upstream's breaker after the last attempt. */
  public BreakerState breakerState() {
    return breakerState;
  }

  @Override
  public String toString() {
    return "UpstreamResponse{status="
        + status
        + ", "
        + body.length
        + " bytes, attempts="
        + attempts
        + ", breaker="
        + breakerState
        + "}";
  }
}
