package io.github.seeda88e5317.resilience;

import com.google.protobuf.ByteString;
import io.github.seeda88e5317.resilience.v1.ExecuteCallRequest;
import io.github.seeda88e5317.resilience.v1.HttpHeader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * An HTTP request the sidecar makes for {@link ResilienceClient#executeCall} to an upstream of its
 * config, through the upstream's breaker, with its per-attempt timeouts and retries. Immutable:
 * each method returns a copy.
 *
 * <pre>{@code
 * UpstreamRequest.post("/charges")
 *     .header("content-type", "application/json")
 *     .body("{\"amount\":4200}")
 *     .idempotencyKey("order-1001")       // makes the POST retryable
 *     .timeout(Duration.ofSeconds(5))
 * }</pre>
 */
public final class UpstreamRequest {
  private final String method;
  private final String path;
  private final String query;
  private final List<String[]> headers;
  private final byte[] body;
  private final Duration timeout; // null: the sidecar's default (30 s)
  private final String idempotencyKey;

  private UpstreamRequest(
      String method,
      String path,
      String query,
      List<String[]> headers,
      byte[] body,
      Duration timeout,
      String idempotencyKey) {
    this.method = method;
    this.path = path;
    this.query = query;
    this.headers = headers;
    this.body = body;
    this.timeout = timeout;
    this.idempotencyKey = idempotencyKey;
  }

  /**
   * A request of {@code method} (GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS) to {@code path}
   * (escaped, starting with "/", appended to the upstream's base URL).
   */
  public static UpstreamRequest of(String method, String path) {
    return new UpstreamRequest(
        Objects.requireNonNull(method, "method"),
        Objects.requireNonNull(path, "path"),
        "",
        List.of(),
        new byte[0],
        null,
        "");
  }

  public static UpstreamRequest get(String path) {
    return of("GET", path);
  }

  public static UpstreamRequest post(String path) {
    return of("POST", path);
  }

  public static UpstreamRequest put(String path) {
    return of("PUT", path);
  }

  public static UpstreamRequest delete(String path) {
    return of("DELETE", path);
  }

  /** The escaped query string, without the leading "?". */
  public UpstreamRequest query(String query) {
    return new UpstreamRequest(
        method, path, Objects.requireNonNull(query, "query"), headers, body, timeout,
        idempotencyKey);
  }

  /**
   * Adds a header (a name may repeat; at most 100 and 64 KiB; Host, Content-Length, hop-by-hop
   * headers and Idempotency-Key are refused: use {@link #idempotencyKey}).
   */
  public UpstreamRequest header(String name, String value) {
    List<String[]> h = new ArrayList<>(headers);
    h.add(new String[] {Objects.requireNonNull(name, "name"), Objects.requireNonNull(value, "value")});
    return new UpstreamRequest(method, path, query, List.copyOf(h), body, timeout, idempotencyKey);
  }

  /** The body (copied; at most the upstream's max_body_bytes, default 4 MiB). */
  public UpstreamRequest body(byte[] body) {
    return new UpstreamRequest(
        method, path, query, headers, Objects.requireNonNull(body, "body").clone(), timeout,
        idempotencyKey);
  }

  /** The body as UTF-8. */
  public UpstreamRequest body(String body) {
    return body(body.getBytes(StandardCharsets.UTF_8));
  }

  /**
   * Bound on the whole call, every attempt and backoff included (1 ms to 10 min; default 30 s).
   * The gRPC call gets this plus the client's call timeout as its deadline.
   */
  public UpstreamRequest timeout(Duration timeout) {
    return new UpstreamRequest(
        method, path, query, headers, body, Objects.requireNonNull(timeout, "timeout"),
        idempotencyKey);
  }

  /**
   * Sent as the Idempotency-Key header on every attempt; it makes any method retryable (without
   * it only GET, HEAD, PUT, DELETE and OPTIONS are retried). 1-512 printable ASCII characters.
   */
  public UpstreamRequest idempotencyKey(String key) {
    return new UpstreamRequest(
        method, path, query, headers, body, timeout, Objects.requireNonNull(key, "key"));
  }

  public String method() {
    return method;
  }

  public String path() {
    return path;
  }

  /** The timeout given, or null for the sidecar's default (30 s). */
  public Duration timeout() {
    return timeout;
  }

  /** The timeout the sidecar applies. */
  Duration effectiveTimeout() {
    return timeout == null ? Duration.ofSeconds(30) : timeout;
  }

  ExecuteCallRequest toProto(String upstream) {
    ExecuteCallRequest.Builder b =
        ExecuteCallRequest.newBuilder()
            .setUpstream(upstream)
            .setMethod(method)
            .setPath(path)
            .setQuery(query)
            .setBody(ByteString.copyFrom(body))
            .setIdempotencyKey(idempotencyKey);
    for (String[] h : headers) {
      b.addHeaders(HttpHeader.newBuilder().setName(h[0]).setValue(h[1]));
    }
    if (timeout != null) {
      b.setTimeout(Protos.duration(timeout));
    }
    return b.build();
  }

  @Override
  public String toString() {
    return "UpstreamRequest{" + method + " " + path + (query.isEmpty() ? "" : "?" + query) + "}";
  }
}
