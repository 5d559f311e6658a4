package io.github.seeda88e5317.resilience;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * What an operation run through {@link ResilienceClient#idempotent} returns to every caller of its
 * key, exactly as it was recorded: bytes (e.g. a response body) and a small string map (e.g. {@code
 * "status" -> "201"}; at most 64 entries).
 */
public final class IdempotentResult {
  private final byte[] data;
  private final Map<String, String> metadata;

  private IdempotentResult(byte[] data, Map<String, String> metadata) {
    this.data = data;
    this.metadata = metadata;
  }

  /** A result of {@code data} (copied) and {@code metadata} (copied). */
  public static IdempotentResult of(byte[] data, Map<String, String> metadata) {
    Objects.requireNonNull(data, "data");
    Objects.requireNonNull(metadata, "metadata");
    return new IdempotentResult(
        data.clone(), Collections.unmodifiableMap(new LinkedHashMap<>(metadata)));
  }

  /** A result of {@code data} without metadata. */
  public static IdempotentResult of(byte[] data) {
    return of(data, Map.of());
  }

  /** A result of {@code text} as UTF-8, with {@code metadata}. */
  public static IdempotentResult ofString(String text, Map<String, String> metadata) {
    return of(text.getBytes(StandardCharsets.UTF_8), metadata);
  }

  /** A result of {@code text} as UTF-8, without metadata. */
  public static IdempotentResult ofString(String text) {
    return ofString(text, Map.of());
  }

  /** The bytes (a copy). */
  public byte[] data() {
    return data.clone();
  }

  /** The bytes as UTF-8 text. */
  public String dataAsString() {
    return new String(data, StandardCharsets.UTF_8);
  }

  /** The metadata (unmodifiable). */
  public Map<String, String> metadata() {
    return metadata;
  }

  byte[] rawData() {
    return data;
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof IdempotentResult r
        && Arrays.equals(data, r.data)
        && metadata.equals(r.metadata);
  }

  @Override
  public int hashCode() {
    return 31 * Arrays.hashCode(data) + metadata.hashCode();
  }

  @Override
  public String toString() {
    return "IdempotentResult{" + data.length + " bytes, metadata=" + metadata + "}";
  }
}
