package io.github.seeda88e5317.resilience;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * Options of {@link ResilienceClient#publish}. Immutable: each method returns a copy.
 *
 * <pre>{@code
 * PublishOptions.defaults().key("order-42").header("content-type", "application/json")
 *     .idempotencyKey("order-42/placed")
 * }</pre>
 */
public final class PublishOptions {
  private static final PublishOptions DEFAULTS = new PublishOptions("", Map.of(), "");

  private final String key;
  private final Map<String, String> headers;
  private final String idempotencyKey;

  private PublishOptions(String key, Map<String, String> headers, String idempotencyKey) {
    this.key = key;
    this.headers = headers;
    this.idempotencyKey = idempotencyKey;
  }

  /** No key, no headers, no idempotency key (every call appends). */
  public static PublishOptions defaults() {
    return DEFAULTS;
  }

  /** The event's key (an order id, say; up to 512 bytes), delivered with it. */
  public PublishOptions key(String key) {
    return new PublishOptions(Objects.requireNonNull(key, "key"), headers, idempotencyKey);
  }

  /** Adds a header delivered with the event (at most 64; names 1-256 bytes, values up to 8 KiB). */
  public PublishOptions header(String name, String value) {
    Map<String, String> h = new LinkedHashMap<>(headers);
    h.put(Objects.requireNonNull(name, "name"), Objects.requireNonNull(value, "value"));
    return new PublishOptions(key, Map.copyOf(h), idempotencyKey);
  }

  /** Replaces the headers. */
  public PublishOptions headers(Map<String, String> headers) {
    return new PublishOptions(key, Map.copyOf(headers), idempotencyKey);
  }

  /**
   * Makes retries of the publish append once (1-512 bytes): a key published before (within the
   * sidecar's {@code events.dedup_retention}, default 24 h) returns the first event's id with
   * {@link PublishResult#duplicate()} set.
   */
  public PublishOptions idempotencyKey(String idempotencyKey) {
    return new PublishOptions(
        key, headers, Objects.requireNonNull(idempotencyKey, "idempotencyKey"));
  }

  public String key() {
    return key;
  }

  public Map<String, String> headers() {
    return headers;
  }

  public String idempotencyKey() {
    return idempotencyKey;
  }
}
