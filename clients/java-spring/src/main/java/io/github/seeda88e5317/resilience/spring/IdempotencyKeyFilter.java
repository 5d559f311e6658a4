package io.github.seeda88e5317.resilience.spring;

import com.google.protobuf.ByteString;
import io.github.seeda88e5317.resilience.IdempotencyKeyMismatchException;
import io.github.seeda88e5317.resilience.ResilienceClient;
import io.github.seeda88e5317.resilience.SidecarException;
import io.github.seeda88e5317.resilience.v1.CheckOrRecordIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.CheckOrRecordIdempotencyResponse;
import io.github.seeda88e5317.resilience.v1.CompleteIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.IdempotencyResult;
import io.github.seeda88e5317.resilience.v1.ReleaseIdempotencyRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import jakarta.servlet.FilterChain;
import jakarta.servlet.ReadListener;
import jakarta.servlet.ServletException;
import jakarta.servlet.ServletInputStream;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletRequestWrapper;
import jakarta.servlet.http.HttpServletResponse;
import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.net.URLDecoder;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.Enumeration;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.http.HttpStatus;
import org.springframework.web.filter.OncePerRequestFilter;
import org.springframework.web.util.ContentCachingResponseWrapper;

/**
 * A servlet filter that makes a request carrying an {@code Idempotency-Key} header run once, as
 * Stripe's API does: the first request runs and its response (status, headers, body) is stored in
 * the sidecar; a retry with the same key and the same request gets that response again, with
 * {@code Idempotent-Replayed: true}, without running the handler, through any sidecar on the same
 * store.
 *
 * <p>For a covered method (default POST, PUT, PATCH, DELETE) carrying the header:
 *
 * <ul>
 *   <li>the key must be 1 to 255 printable ASCII characters, else 400 ({@code
 *       IDEMPOTENCY_KEY_INVALID});
 *   <li>the body is read fully (at most {@code maxBodySize}, else 413 {@code
 *       IDEMPOTENCY_BODY_TOO_LARGE}) and handed to the handler unchanged; the request's
 *       fingerprint is the hex SHA-256 of method, "\n", path with query string, "\n", body;
 *   <li>the store key is {@code <scope>:<Idempotency-Key>};
 *   <li>first request: the handler runs and its response is buffered; a status below 500 is stored
 *       and then sent; a 5xx or an exception releases the key (a retry runs again) and is sent or
 *       propagated as it is: a 5xx is never stored;
 *   <li>a stored response with the same fingerprint is replayed;
 *   <li>another request with this key in progress: 409 ({@code IDEMPOTENCY_KEY_IN_USE}) with
 *       {@code Retry-After};
 *   <li>the key used with another request (method, path or body): 422 ({@code
 *       IDEMPOTENCY_KEY_REUSED});
 *   <li>the sidecar unreachable or not answering in time: 503 ({@code SIDECAR_UNAVAILABLE}) with
 *       {@code Retry-After: 1}; the handler does not run.
 * </ul>
 *
 * Requests without the header pass straight through (or get 400 {@code IDEMPOTENCY_KEY_MISSING}
 * when {@code required}); so do other methods. Errors are {@code application/problem+json} bodies
 * (RFC 9457) with a {@code code} member. Asynchronous handlers are covered: the response is
 * stored when the last async dispatch ends. The lease is not renewed while the handler runs: a
 * handler running longer than {@code leaseTtl} lets a retry run it again.
 *
 * <p>The starter registers it in servlet web applications; build one yourself with {@link
 * #IdempotencyKeyFilter(ResilienceClient, ResilienceSidecarProperties.Idempotency,
 * IdempotencyScopeResolver)}.
 */
public class IdempotencyKeyFilter extends OncePerRequestFilter {

  /** The request header carrying the key. */
  public static final String HEADER = "Idempotency-Key";

  /** The response header added to a replayed response. */
  public static final String REPLAYED_HEADER = "Idempotent-Replayed";

  /** The longest key accepted. */
  public static final int MAX_KEY_LENGTH = 255;

  /** The media type of the error bodies. */
  public static final String PROBLEM_JSON = "application/problem+json";

  private static final Logger log = LoggerFactory.getLogger(IdempotencyKeyFilter.class);

  /** Never stored: hop-by-hop headers (RFC 9110 7.6.1), cookies, and names the replay sets. */
  private static final Set<String> NOT_STORED =
      Set.of(
          "connection",
          "keep-alive",
          "proxy-authenticate",
          "proxy-authorization",
          "proxy-connection",
          "te",
          "trailer",
          "transfer-encoding",
          "upgrade",
          "set-cookie",
          "status",
          "content-length",
          "date",
          REPLAYED_HEADER.toLowerCase(Locale.ROOT));

  private final ResilienceClient client;
  private final Set<String> methods;
  private final boolean required;
  private final long maxBodyBytes;
  private final Duration leaseTtl;
  private final Duration retention;
  private final Duration waitTimeout;
  private final IdempotencyScopeResolver scope;

  /**
   * @param settings methods, required, max body size, lease TTL, retention, wait timeout and scope
   * @param scope chooses the scope per request; null uses {@code settings.getScope()}
   * @throws IllegalArgumentException a setting is out of range (the message names it)
   */
  public IdempotencyKeyFilter(
      ResilienceClient client,
      ResilienceSidecarProperties.Idempotency settings,
      IdempotencyScopeResolver scope) {
    this.client = Objects.requireNonNull(client, "client");
    Objects.requireNonNull(settings, "settings");
    this.methods =
        settings.getMethods().stream()
            .map(m -> m.trim().toUpperCase(Locale.ROOT))
            .collect(Collectors.toUnmodifiableSet());
    this.required = settings.isRequired();
    this.maxBodyBytes = settings.getMaxBodySize().toBytes();
    if (maxBodyBytes < 0 || maxBodyBytes > Integer.MAX_VALUE - 8) {
      throw new IllegalArgumentException(
          "resilience.sidecar.idempotency.max-body-size must be 0 to 2 GiB, got "
              + settings.getMaxBodySize());
    }
    this.leaseTtl = positive(settings.getLeaseTtl(), "lease-ttl");
    this.retention = positive(settings.getRetention(), "retention");
    this.waitTimeout = Objects.requireNonNull(settings.getWaitTimeout(), "wait-timeout");
    if (waitTimeout.isNegative()) {
      throw new IllegalArgumentException(
          "resilience.sidecar.idempotency.wait-timeout must not be negative, got " + waitTimeout);
    }
    if (scope == null) {
      String s = settings.getScope();
      if (s == null || s.isEmpty()) {
        throw new IllegalArgumentException(
            "resilience.sidecar.idempotency.scope must not be empty");
      }
      this.scope = request -> s;
    } else {
      this.scope = scope;
    }
  }

  private static Duration positive(Duration d, String name) {
    if (d == null || d.isNegative() || d.isZero()) {
      throw new IllegalArgumentException(
          "resilience.sidecar.idempotency." + name + " must be positive, got " + d);
    }
    return d;
  }

  /**
   * The request's fingerprint: hex SHA-256 over {@code method "\n" pathAndQuery "\n" body}, the
   * same in every language's middleware.
   */
  public static String fingerprint(String method, String pathAndQuery, byte[] body) {
    try {
      MessageDigest sha = MessageDigest.getInstance("SHA-256");
      sha.update((method + "\n" + pathAndQuery + "\n").getBytes(StandardCharsets.UTF_8));
      sha.update(body);
      return HexFormat.of().formatHex(sha.digest());
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("SHA-256 is required of every JVM", e);
    }
  }

  @Override
  protected void doFilterInternal(
      HttpServletRequest request, HttpServletResponse response, FilterChain chain)
      throws ServletException, IOException {
    if (isAsyncDispatch(request)) {
      Object owned = request.getAttribute(OWNED);
      if (owned instanceof Owned o) {
        continueAsync(request, response, chain, o);
      } else {
        chain.doFilter(request, response);
      }
      return;
    }
    String method = request.getMethod().toUpperCase(Locale.ROOT);
    if (!methods.contains(method)) {
      chain.doFilter(request, response);
      return;
    }
    List<String> values = Collections.list(request.getHeaders(HEADER));
    if (values.isEmpty()) {
      if (required) {
        problem(
            response,
            400,
            "IDEMPOTENCY_KEY_MISSING",
            "this request needs an " + HEADER + " header");
        return;
      }
      chain.doFilter(request, response);
      return;
    }
    if (values.size() > 1) {
      problem(
          response,
          400,
          "IDEMPOTENCY_KEY_INVALID",
          "the " + HEADER + " header must be sent once, got " + values.size());
      return;
    }
    String key = values.get(0);
    String invalid = checkKey(key);
    if (invalid != null) {
      problem(
          response, 400, "IDEMPOTENCY_KEY_INVALID", "the " + HEADER + " header " + invalid);
      return;
    }
    String sc = scope.scope(request);
    if (sc == null || sc.isEmpty()) {
      throw new IllegalStateException(
          "the IdempotencyScopeResolver returned " + (sc == null ? "null" : "\"\"")
              + ", not a non-empty scope");
    }

    byte[] body = readBody(request);
    if (body == null) {
      response.setHeader("Connection", "close");
      problem(
          response,
          413,
          "IDEMPOTENCY_BODY_TOO_LARGE",
          "the request body is over the "
              + maxBodyBytes
              + " bytes an idempotent request may have");
      return;
    }
    String storeKey = sc + ":" + key;
    String path = request.getRequestURI();
    if (request.getQueryString() != null) {
      path = path + "?" + request.getQueryString();
    }
    String fp = fingerprint(method, path, body);

    CheckOrRecordIdempotencyResponse resp;
    try {
      long deadline = waitTimeout.plus(callTimeout()).toNanos();
      resp =
          client
              .idempotency()
              .withDeadlineAfter(deadline, TimeUnit.NANOSECONDS)
              .checkOrRecordIdempotency(
                  CheckOrRecordIdempotencyRequest.newBuilder()
                      .setKey(storeKey)
                      .setFingerprint(fp)
                      .setLeaseTtl(proto(leaseTtl))
                      .setRetention(proto(retention))
                      .setWaitTimeout(proto(waitTimeout))
                      .build());
    } catch (StatusRuntimeException e) {
      SidecarException se = SidecarException.from(e);
      if (se instanceof IdempotencyKeyMismatchException) {
        problem(
            response,
            422,
            "IDEMPOTENCY_KEY_REUSED",
            "this " + HEADER + " was already used with another request (method, path or body)");
        return;
      }
      Status.Code code = se.getStatus().getCode();
      if (code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED) {
        log.warn("Idempotency-Key: the sidecar cannot be reached: {}", se.getMessage());
        response.setHeader("Retry-After", "1");
        problem(
            response,
            503,
            "SIDECAR_UNAVAILABLE",
            "the idempotency store cannot be reached; the request was not processed");
        return;
      }
      throw se;
    }

    switch (resp.getOutcome()) {
      case OUTCOME_COMPLETED -> replay(response, resp.getResult());
      case OUTCOME_IN_PROGRESS -> {
        Duration after =
            Duration.ofSeconds(resp.getRetryAfter().getSeconds(), resp.getRetryAfter().getNanos());
        long secs = after.getSeconds() + (after.getNano() > 0 ? 1 : 0);
        response.setHeader("Retry-After", Long.toString(Math.max(1, secs)));
        problem(
            response,
            409,
            "IDEMPOTENCY_KEY_IN_USE",
            "a request with this " + HEADER + " is being processed");
      }
      case OUTCOME_STARTED -> runOwned(request, response, chain, body, storeKey, resp.getLeaseId());
      default ->
          throw new IllegalStateException(
              "unexpected idempotency outcome " + resp.getOutcome() + " for " + storeKey);
    }
  }

  /** What an asynchronous request (Callable, DeferredResult, ...) carries to its next dispatch. */
  private record Owned(
      String storeKey, String leaseId, HttpServletResponse response, ContentCachingResponseWrapper captured) {}

  private static final String OWNED = IdempotencyKeyFilter.class.getName() + ".OWNED";

  /** Async dispatches are filtered too: the response of an asynchronous handler ends in one. */
  @Override
  protected boolean shouldNotFilterAsyncDispatch() {
    return false;
  }

  private void runOwned(
      HttpServletRequest request,
      HttpServletResponse response,
      FilterChain chain,
      byte[] body,
      String storeKey,
      String leaseId)
      throws ServletException, IOException {
    Owned owned =
        new Owned(storeKey, leaseId, response, new ContentCachingResponseWrapper(response));
    BufferedBodyRequest req = new BufferedBodyRequest(request, body);
    try {
      chain.doFilter(req, owned.captured());
    } catch (IOException | ServletException | RuntimeException | Error e) {
      release(storeKey, leaseId);
      throw e;
    }
    if (req.isAsyncStarted()) {
      // The handler goes on asynchronously; its response is finished in the last async dispatch.
      req.setAttribute(OWNED, owned);
      return;
    }
    finish(owned);
  }

  /** An async dispatch of a request this filter owns: hand on, then finish when it is the last. */
  private void continueAsync(
      HttpServletRequest request, HttpServletResponse response, FilterChain chain, Owned owned)
      throws ServletException, IOException {
    try {
      chain.doFilter(request, response);
    } catch (IOException | ServletException | RuntimeException | Error e) {
      request.removeAttribute(OWNED);
      release(owned.storeKey(), owned.leaseId());
      throw e;
    }
    if (!request.isAsyncStarted()) {
      request.removeAttribute(OWNED);
      finish(owned);
    }
  }

  /** Stores a response below 500 or releases the key, then sends the response. */
  private void finish(Owned owned) throws IOException {
    String storeKey = owned.storeKey();
    String leaseId = owned.leaseId();
    ContentCachingResponseWrapper captured = owned.captured();
    HttpServletResponse response = owned.response();
    int status = captured.getStatus();
    if (status >= 500) {
      release(storeKey, leaseId);
    } else {
      byte[] data = captured.getContentAsByteArray();
      Map<String, String> metadata = new LinkedHashMap<>();
      for (String name : response.getHeaderNames()) {
        String lower = name.toLowerCase(Locale.ROOT);
        if (NOT_STORED.contains(lower) || metadata.containsKey(lower)) {
          continue;
        }
        Collection<String> vs = response.getHeaders(name);
        metadata.put(lower, String.join(", ", vs));
      }
      if (captured.getContentType() != null) {
        metadata.put("content-type", captured.getContentType());
      }
      metadata.put("status", Integer.toString(status));
      try {
        client
            .idempotency()
            .completeIdempotency(
                CompleteIdempotencyRequest.newBuilder()
                    .setKey(storeKey)
                    .setLeaseId(leaseId)
                    .setResult(
                        IdempotencyResult.newBuilder()
                            .setData(ByteString.copyFrom(data))
                            .putAllMetadata(metadata))
                    .build());
      } catch (StatusRuntimeException e) {
        // The handler ran: its response goes out all the same. The key stays leased (duplicates
        // get 409) until the lease TTL passes.
        log.warn(
            "Idempotency-Key: the response to {} was sent but not stored: {}",
            storeKey,
            SidecarException.from(e).getMessage());
      }
    }
    captured.copyBodyToResponse();
  }

  private void release(String storeKey, String leaseId) {
    try {
      client
          .idempotency()
          .releaseIdempotency(
              ReleaseIdempotencyRequest.newBuilder().setKey(storeKey).setLeaseId(leaseId).build());
    } catch (StatusRuntimeException e) {
      log.warn(
          "Idempotency-Key: releasing {} failed; it frees itself when its lease expires: {}",
          storeKey,
          SidecarException.from(e).getMessage());
    }
  }

  private static void replay(HttpServletResponse response, IdempotencyResult result)
      throws IOException {
    Map<String, String> md = result.getMetadataMap();
    int status;
    try {
      status = Integer.parseInt(md.getOrDefault("status", "200"));
    } catch (NumberFormatException e) {
      throw new IllegalStateException("a stored response has the status " + md.get("status"), e);
    }
    response.setStatus(status);
    for (Map.Entry<String, String> h : md.entrySet()) {
      String name = h.getKey();
      if (NOT_STORED.contains(name)) {
        continue;
      }
      if (name.equals("content-type")) {
        response.setContentType(h.getValue());
      } else {
        response.setHeader(name, h.getValue());
      }
    }
    response.setHeader(REPLAYED_HEADER, "true");
    byte[] data = result.getData().toByteArray();
    response.setContentLength(data.length);
    response.getOutputStream().write(data);
    response.flushBuffer();
  }

  /** Why {@code key} is not a valid key, or null when it is. */
  static String checkKey(String key) {
    if (key.isEmpty()) {
      return "must not be empty";
    }
    if (key.length() > MAX_KEY_LENGTH) {
      return "must be at most " + MAX_KEY_LENGTH + " characters, got " + key.length();
    }
    for (int i = 0; i < key.length(); i++) {
      char c = key.charAt(i);
      if (c < 0x20 || c > 0x7e) {
        return "must be printable ASCII, got character code " + (int) c + " at position " + i;
      }
    }
    return null;
  }

  /** The whole body, or null when it is over the limit. */
  private byte[] readBody(HttpServletRequest request) throws IOException {
    long declared = request.getContentLengthLong();
    if (declared > maxBodyBytes) {
      return null;
    }
    ByteArrayOutputStream out = new ByteArrayOutputStream(declared > 0 ? (int) declared : 256);
    InputStream in = request.getInputStream();
    byte[] buf = new byte[8192];
    long total = 0;
    int n;
    while ((n = in.read(buf)) > 0) {
      total += n;
      if (total > maxBodyBytes) {
        return null;
      }
      out.write(buf, 0, n);
    }
    return out.toByteArray();
  }

  private Duration callTimeout() {
    Duration t = client.callTimeout();
    return t.isZero() ? ResilienceClient.DEFAULT_CALL_TIMEOUT : t;
  }

  private static com.google.protobuf.Duration proto(Duration d) {
    return com.google.protobuf.Duration.newBuilder()
        .setSeconds(d.getSeconds())
        .setNanos(d.getNano())
        .build();
  }

  /** Writes an RFC 9457 problem body. */
  static void problem(HttpServletResponse response, int status, String code, String detail)
      throws IOException {
    HttpStatus hs = HttpStatus.resolve(status);
    String title = hs != null ? hs.getReasonPhrase() : Integer.toString(status);
    String json =
        "{\"type\":\"about:blank\",\"title\":"
            + quote(title)
            + ",\"status\":"
            + status
            + ",\"detail\":"
            + quote(detail)
            + ",\"code\":"
            + quote(code)
            + "}";
    byte[] bytes = json.getBytes(StandardCharsets.UTF_8);
    response.setStatus(status);
    response.setContentType(PROBLEM_JSON);
    response.setContentLength(bytes.length);
    response.getOutputStream().write(bytes);
    response.flushBuffer();
  }

  private static String quote(String s) {
    StringBuilder b = new StringBuilder(s.length() + 2).append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        default -> {
          if (c < 0x20) {
            b.append(String.format("\\u%04x", (int) c));
          } else {
            b.append(c);
          }
        }
      }
    }
    return b.append('"').toString();
  }

  /**
   * The request with its body read into memory, handed to the handler unchanged. A form body
   * ({@code application/x-www-form-urlencoded}) is also parsed into the request parameters, as the
   * container would have done had the filter not read it.
   */
  private static final class BufferedBodyRequest extends HttpServletRequestWrapper {
    private final byte[] body;
    private Map<String, String[]> params; // null until first asked for

    BufferedBodyRequest(HttpServletRequest request, byte[] body) {
      super(request);
      this.body = body;
    }

    @Override
    public Map<String, String[]> getParameterMap() {
      if (params == null) {
        Map<String, String[]> base = super.getParameterMap(); // the query string's
        String ct = getContentType();
        if (ct == null
            || !ct.toLowerCase(Locale.ROOT).startsWith("application/x-www-form-urlencoded")) {
          params = base;
        } else {
          Map<String, List<String>> all = new LinkedHashMap<>();
          base.forEach((k, v) -> all.computeIfAbsent(k, x -> new ArrayList<>()).addAll(List.of(v)));
          String enc = getCharacterEncoding();
          Charset cs = enc != null ? Charset.forName(enc) : StandardCharsets.UTF_8;
          for (String pair : new String(body, cs).split("&")) {
            if (pair.isEmpty()) {
              continue;
            }
            int eq = pair.indexOf('=');
            String k = URLDecoder.decode(eq < 0 ? pair : pair.substring(0, eq), cs);
            String v = eq < 0 ? "" : URLDecoder.decode(pair.substring(eq + 1), cs);
            all.computeIfAbsent(k, x -> new ArrayList<>()).add(v);
          }
          Map<String, String[]> m = new LinkedHashMap<>();
          all.forEach((k, v) -> m.put(k, v.toArray(String[]::new)));
          params = Collections.unmodifiableMap(m);
        }
      }
      return params;
    }

    @Override
    public String getParameter(String name) {
      String[] v = getParameterMap().get(name);
      return v == null || v.length == 0 ? null : v[0];
    }

    @Override
    public String[] getParameterValues(String name) {
      String[] v = getParameterMap().get(name);
      return v == null ? null : v.clone();
    }

    @Override
    public Enumeration<String> getParameterNames() {
      return Collections.enumeration(getParameterMap().keySet());
    }

    @Override
    public ServletInputStream getInputStream() {
      ByteArrayInputStream in = new ByteArrayInputStream(body);
      return new ServletInputStream() {
        @Override
        public int read() {
          return in.read();
        }

        @Override
        public int read(byte[] b, int off, int len) {
          return in.read(b, off, len);
        }

        @Override
        public boolean isFinished() {
          return in.available() == 0;
        }

        @Override
        public boolean isReady() {
          return true;
        }

        @Override
        public void setReadListener(ReadListener listener) {
          throw new UnsupportedOperationException(
              "the body of an idempotent request is already read: read it synchronously");
        }
      };
    }

    @Override
    public BufferedReader getReader() {
      String enc = getCharacterEncoding();
      Charset cs = enc != null ? Charset.forName(enc) : StandardCharsets.ISO_8859_1;
      return new BufferedReader(new InputStreamReader(getInputStream(), cs));
    }

    @Override
    public int getContentLength() {
      return body.length;
    }

    @Override
    public long getContentLengthLong() {
      return body.length;
    }
  }
}
