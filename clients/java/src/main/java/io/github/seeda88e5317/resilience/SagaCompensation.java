package io.github.seeda88e5317.resilience;

import com.google.protobuf.ByteString;
import io.github.seeda88e5317.resilience.v1.Compensation;
import io.github.seeda88e5317.resilience.v1.HttpHeader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * The HTTP call that undoes a saga step, made by the sidecar to an upstream of its config (never an
 * arbitrary URL) with the header {@code Idempotency-Key: <saga_id>:<step>}. The endpoint must be
 * idempotent on that key and answer 2xx when there is nothing to undo (the step is recorded before
 * it runs, so it may never have happened). Immutable: each method returns a copy.
 *
 * <pre>{@code
 * SagaCompensation.post("payments", "/refunds").header("content-type", "application/json")
 *     .body("{\"charge\":\"ch_1\"}")
 * }</pre>
 */
public final class SagaCompensation {
  private final String upstream;
  private final String method;
  private final String path;
  private final String query;
  private final List<String[]> headers;
  private final byte[] body;

  private SagaCompensation(
      String upstream, String method, String path, String query, List<String[]> headers,
      byte[] body) {
    this.upstream = upstream;
    this.method = method;
    this.path = path;
    this.query = query;
    this.headers = headers;
    this.body = body;
  }

  /**
   * A compensation calling {@code method} (GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS) on
   * {@code path} (escaped, starting with "/") of the upstream {@code upstream}.
   */
  public static SagaCompensation of(String upstream, String method, String path) {
    return new SagaCompensation(
        Objects.requireNonNull(upstream, "upstream"),
        Objects.requireNonNull(method, "method"),
        Objects.requireNonNull(path, "path"),
        "",
        List.of(),
        new byte[0]);
  }

  public static SagaCompensation post(String upstream, String path) {
    return of(upstream, "POST", path);
  }

  public static SagaCompensation delete(String upstream, String path) {
    return of(upstream, "DELETE", path);
  }

  /** The escaped query string, without the leading "?". */
  public SagaCompensation query(String query) {
    return new SagaCompensation(
        upstream, method, path, Objects.requireNonNull(query, "query"), headers, body);
  }

  /** Adds a header (Host, Content-Length, hop-by-hop headers and Idempotency-Key are refused). */
  public SagaCompensation header(String name, String value) {
    List<String[]> h = new ArrayList<>(headers);
    h.add(new String[] {Objects.requireNonNull(name, "name"), Objects.requireNonNull(value, "value")});
    return new SagaCompensation(upstream, method, path, query, List.copyOf(h), body);
  }

  /** The body (copied; at most 64 KiB by default). */
  public SagaCompensation body(byte[] body) {
    return new SagaCompensation(
        upstream, method, path, query, headers, Objects.requireNonNull(body, "body").clone());
  }

  /** The body as UTF-8. */
  public SagaCompensation body(String body) {
    return body(body.getBytes(StandardCharsets.UTF_8));
  }

  /** The message {@code RecordStep} carries. */
  public Compensation toProto() {
    Compensation.Builder b =
        Compensation.newBuilder()
            .setUpstream(upstream)
            .setMethod(method)
            .setPath(path)
            .setQuery(query)
            .setBody(ByteString.copyFrom(body));
    for (String[] h : headers) {
      b.addHeaders(HttpHeader.newBuilder().setName(h[0]).setValue(h[1]));
    }
    return b.build();
  }

  @Override
  public String toString() {
    return "SagaCompensation{" + upstream + ": " + method + " " + path + "}";
  }
}
