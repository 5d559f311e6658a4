package io.github.seeda88e5317.resilience.spring;

import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.springframework.boot.context.properties.ConfigurationProperties;
import org.springframework.util.unit.DataSize;

/**
 * The {@code resilience.sidecar.*} settings of the starter. Every setting is optional: without any,
 * the client reads {@code SIDECAR_ADDR}, {@code SIDECAR_API_TOKEN} and {@code
 * SIDECAR_API_TOKEN_FILE} as {@link io.github.seeda88e5317.resilience.ResilienceClient#create()}
 * does, and the Idempotency-Key filter guards POST, PUT, PATCH and DELETE requests that carry the
 * header.
 *
 * <pre>
 * resilience:
 *   sidecar:
 *     address: 127.0.0.1:50051        # or unix:///run/sidecar.sock; default $SIDECAR_ADDR
 *     token-file: /var/run/secrets/sidecar/token
 *     call-timeout: 5s
 *     idempotency:
 *       scope: orders-api
 *       required: true
 * </pre>
 */
@ConfigurationProperties(prefix = "resilience.sidecar")
public class ResilienceSidecarProperties {

  /**
   * The sidecar address, host:port or unix:///absolute/path. Default: $SIDECAR_ADDR, else
   * 127.0.0.1:50051.
   */
  private String address;

  /** The API token, sent as "authorization: Bearer ...". Default: $SIDECAR_API_TOKEN. */
  private String token;

  /**
   * A file holding the API token (read once, at start-up), used when token is unset. Default:
   * $SIDECAR_API_TOKEN_FILE.
   */
  private Path tokenFile;

  /** The deadline of each call to the sidecar that has none of its own; 0 disables it. */
  private Duration callTimeout = Duration.ofSeconds(10);

  /** How long a call waits for an unreachable sidecar (e.g. restarting) before it fails. */
  private Duration connectWait = Duration.ofSeconds(2);

  /** The longest pause between reconnect attempts to a sidecar that went away. */
  private Duration maxReconnectBackoff = Duration.ofMillis(500);

  /** Whether calls carry the current OpenTelemetry context (when the API is on the class path). */
  private boolean propagateTraceContext = true;

  private final Idempotency idempotency = new Idempotency();

  public String getAddress() {
    return address;
  }

  public void setAddress(String address) {
    this.address = address;
  }

  public String getToken() {
    return token;
  }

  public void setToken(String token) {
    this.token = token;
  }

  public Path getTokenFile() {
    return tokenFile;
  }

  public void setTokenFile(Path tokenFile) {
    this.tokenFile = tokenFile;
  }

  public Duration getCallTimeout() {
    return callTimeout;
  }

  public void setCallTimeout(Duration callTimeout) {
    this.callTimeout = callTimeout;
  }

  public Duration getConnectWait() {
    return connectWait;
  }

  public void setConnectWait(Duration connectWait) {
    this.connectWait = connectWait;
  }

  public Duration getMaxReconnectBackoff() {
    return maxReconnectBackoff;
  }

  public void setMaxReconnectBackoff(Duration maxReconnectBackoff) {
    this.maxReconnectBackoff = maxReconnectBackoff;
  }

  public boolean isPropagateTraceContext() {
    return propagateTraceContext;
  }

  public void setPropagateTraceContext(boolean propagateTraceContext) {
    this.propagateTraceContext = propagateTraceContext;
  }

  public Idempotency getIdempotency() {
    return idempotency;
  }

  /** The {@code resilience.sidecar.idempotency.*} settings of the Idempotency-Key filter. */
  public static class Idempotency {

    /** Whether the Idempotency-Key filter is registered (servlet web applications only). */
    private boolean enabled = true;

    /** Whether a covered request without the header is refused with 400. */
    private boolean required = false;

    /** The HTTP methods the filter covers; others pass straight through. */
    private List<String> methods = new ArrayList<>(List.of("POST", "PUT", "PATCH", "DELETE"));

    /**
     * The prefix of every store key, "scope:key". An IdempotencyScopeResolver bean replaces it
     * (e.g. to add the tenant or user).
     */
    private String scope = "http";

    /** The largest request body the filter reads (default 1MB, 1 MiB); a larger one gets 413. */
    private DataSize maxBodySize = DataSize.ofMegabytes(1);

    /**
     * How long the first request owns the key; a request running longer loses it to a retry. 1s-1h.
     */
    private Duration leaseTtl = Duration.ofSeconds(30);

    /** How long a stored response is replayed. 1s-720h. */
    private Duration retention = Duration.ofHours(24);

    /**
     * How long a duplicate waits for the first request to finish before it gets 409; 0 (the
     * default) answers at once. At most 5m.
     */
    private Duration waitTimeout = Duration.ZERO;

    /** The URL patterns the filter is registered for. */
    private List<String> urlPatterns = new ArrayList<>(List.of("/*"));

    /**
     * The filter's order: by default 0, after Spring Security's filter chain (-100), so that an
     * IdempotencyScopeResolver can read the authenticated user.
     */
    private int filterOrder = 0;

    public boolean isEnabled() {
      return enabled;
    }

    public void setEnabled(boolean enabled) {
      this.enabled = enabled;
    }

    public boolean isRequired() {
      return required;
    }

    public void setRequired(boolean required) {
      this.required = required;
    }

    public List<String> getMethods() {
      return methods;
    }

    public void setMethods(List<String> methods) {
      this.methods = methods;
    }

    public String getScope() {
      return scope;
    }

    public void setScope(String scope) {
      this.scope = scope;
    }

    public DataSize getMaxBodySize() {
      return maxBodySize;
    }

    public void setMaxBodySize(DataSize maxBodySize) {
      this.maxBodySize = maxBodySize;
    }

    public Duration getLeaseTtl() {
      return leaseTtl;
    }

    public void setLeaseTtl(Duration leaseTtl) {
      this.leaseTtl = leaseTtl;
    }

    public Duration getRetention() {
      return retention;
    }

    public void setRetention(Duration retention) {
      this.retention = retention;
    }

    public Duration getWaitTimeout() {
      return waitTimeout;
    }

    public void setWaitTimeout(Duration waitTimeout) {
      this.waitTimeout = waitTimeout;
    }

    public List<String> getUrlPatterns() {
      return urlPatterns;
    }

    public void setUrlPatterns(List<String> urlPatterns) {
      this.urlPatterns = urlPatterns;
    }

    public int getFilterOrder() {
      return filterOrder;
    }

    public void setFilterOrder(int filterOrder) {
      this.filterOrder = filterOrder;
    }
  }
}
