package io.github.seeda88e5317.resilience.spring;

import io.github.seeda88e5317.resilience.LockOptions;
import io.github.seeda88e5317.resilience.ResilienceClient;
import java.lang.reflect.Method;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.CompletionStage;
import org.aspectj.lang.ProceedingJoinPoint;
import org.aspectj.lang.annotation.Around;
import org.aspectj.lang.annotation.Aspect;
import org.springframework.core.Ordered;

/**
 * The aspect behind {@link WithLock}: {@link ResilienceClient#withLock} around the method. Ordered
 * inside {@link IdempotentAspect} and outside {@code @Transactional}.
 */
@Aspect
public class WithLockAspect implements Ordered {

  /** The order of this aspect: inside {@link IdempotentAspect#ORDER}, outside transactions. */
  public static final int ORDER = Ordered.LOWEST_PRECEDENCE - 100;

  private final ResilienceClient client;
  private final KeyExpressions expressions;

  WithLockAspect(ResilienceClient client, KeyExpressions expressions) {
    this.client = Objects.requireNonNull(client, "client");
    this.expressions = Objects.requireNonNull(expressions, "expressions");
  }

  @Override
  public int getOrder() {
    return ORDER;
  }

  /** Runs the method under the lock; see {@link WithLock}. */
  @Around("@annotation(withLock)")
  public Object around(ProceedingJoinPoint pjp, WithLock withLock) throws Throwable {
    Method method = KeyExpressions.method(pjp);
    if (CompletionStage.class.isAssignableFrom(method.getReturnType())) {
      throw new IllegalStateException(
          KeyExpressions.where("WithLock", "key", method)
              + ": methods returning a CompletionStage are not supported; use"
              + " ResilienceClient.withLockAsync");
    }
    String key = expressions.evaluate("WithLock", "key", withLock.key(), pjp);
    LockOptions options =
        LockOptions.defaults()
            .ttl(expressions.duration("WithLock", "ttl", withLock.ttl(), method))
            .waitTimeout(
                expressions.duration("WithLock", "waitTimeout", withLock.waitTimeout(), method));
    if (!withLock.owner().isEmpty()) {
      options = options.owner(withLock.owner());
    }
    Duration maxHold = expressions.duration("WithLock", "maxHold", withLock.maxHold(), method);
    if (!maxHold.isZero()) {
      options = options.maxHold(maxHold);
    }
    try {
      return client.withLock(
          key,
          options,
          (lease, cancelled) -> {
            CurrentLock.Held previous = CurrentLock.enter(lease, cancelled);
            try {
              return IdempotentAspect.Carrier.proceed(pjp);
            } finally {
              CurrentLock.exit(previous);
            }
          });
    } catch (IdempotentAspect.Carrier c) {
      throw c.getCause();
    }
  }
}
