package io.github.seeda88e5317.resilience.spring;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.github.seeda88e5317.resilience.IdempotentOptions;
import io.github.seeda88e5317.resilience.IdempotentResult;
import io.github.seeda88e5317.resilience.ResilienceClient;
import java.lang.reflect.Method;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletionStage;
import org.aspectj.lang.ProceedingJoinPoint;
import org.aspectj.lang.annotation.Around;
import org.aspectj.lang.annotation.Aspect;
import org.springframework.core.Ordered;

/**
 * The aspect behind {@link Idempotent}: {@link ResilienceClient#idempotent} around the method,
 * with its return value stored as JSON. Ordered outside {@link WithLockAspect} and outside
 * {@code @Transactional}, so a duplicate neither takes the lock nor opens a transaction, and the
 * result is stored after the transaction committed.
 */
@Aspect
public class IdempotentAspect implements Ordered {

  /** The order of this aspect: outside {@link WithLockAspect#ORDER} and transactions. */
  public static final int ORDER = Ordered.LOWEST_PRECEDENCE - 200;

  private final ResilienceClient client;
  private final ObjectMapper json;
  private final KeyExpressions expressions;

  IdempotentAspect(ResilienceClient client, ObjectMapper json, KeyExpressions expressions) {
    this.client = Objects.requireNonNull(client, "client");
    this.json = Objects.requireNonNull(json, "json");
    this.expressions = Objects.requireNonNull(expressions, "expressions");
  }

  @Override
  public int getOrder() {
    return ORDER;
  }

  /** Runs the method once per key; see {@link Idempotent}. */
  @Around("@annotation(idempotent)")
  public Object around(ProceedingJoinPoint pjp, Idempotent idempotent) throws Throwable {
    Method method = KeyExpressions.method(pjp);
    if (CompletionStage.class.isAssignableFrom(method.getReturnType())) {
      throw new IllegalStateException(
          KeyExpressions.where("Idempotent", "key", method)
              + ": methods returning a CompletionStage are not supported; use"
              + " ResilienceClient.idempotentAsync");
    }
    String name =
        idempotent.name().isEmpty()
            ? method.getDeclaringClass().getSimpleName() + "." + method.getName()
            : idempotent.name();
    String key = name + ":" + expressions.evaluate("Idempotent", "key", idempotent.key(), pjp);
    String fingerprint =
        idempotent.fingerprint().isEmpty()
            ? ""
            : ResilienceClient.fingerprint(
                expressions.evaluate("Idempotent", "fingerprint", idempotent.fingerprint(), pjp));
    IdempotentOptions options =
        IdempotentOptions.defaults()
            .leaseTtl(expressions.duration("Idempotent", "leaseTtl", idempotent.leaseTtl(), method))
            .retention(
                expressions.duration("Idempotent", "retention", idempotent.retention(), method))
            .maxWait(expressions.duration("Idempotent", "maxWait", idempotent.maxWait(), method));

    Object[] returned = new Object[1];
    boolean[] ran = new boolean[1];
    IdempotentResult result;
    try {
      result =
          client.idempotent(
              key,
              fingerprint,
              options,
              () -> {
                Object value = Carrier.proceed(pjp);
                ran[0] = true;
                returned[0] = value;
                return IdempotentResult.of(
                    json.writeValueAsBytes(value), Map.of("content-type", "application/json"));
              });
    } catch (Carrier c) {
      throw c.getCause();
    }
    if (ran[0]) {
      return returned[0];
    }
    if (method.getReturnType() == void.class) {
      return null;
    }
    return json.readValue(result.data(), json.constructType(method.getGenericReturnType()));
  }

  /** Carries a Throwable that is not an Exception through the client's lambdas. */
  static final class Carrier extends RuntimeException {
    private static final long serialVersionUID = 1L;

    Carrier(Throwable cause) {
      super(cause);
    }

    static Object proceed(ProceedingJoinPoint pjp) throws Exception {
      try {
        return pjp.proceed();
      } catch (Exception e) {
        throw e;
      } catch (Throwable t) {
        throw new Carrier(t);
      }
    }
  }
}
