package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** LamportClock against the real sidecar on Redis. */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class ClockTest {
  ResilienceClient client;

  @BeforeEach
  void connect(SidecarExtension.Env env) {
    client = env.client();
  }

  @AfterEach
  void close() {
    client.close();
  }

  @Test
  void stampsIncreaseAndObserveMovesPastARemoteStamp() throws Exception {
    LamportClock clock = client.lamportClock("java-clock-" + System.nanoTime());
    assertEquals(0, clock.current());
    long a = clock.stamp();
    long b = clock.stamp();
    assertTrue(b > a, a + " then " + b);
    LamportClock.Range r = clock.reserve(3);
    assertEquals(r.first() + 2, r.last());
    assertTrue(r.first() > b);
    long received = clock.observe(r.last() + 1000);
    assertEquals(r.last() + 1001, received);
    assertEquals(received, clock.current());
    // A stamp from the past merges to the next value.
    assertEquals(received + 1, clock.observe(1));

    long async = clock.stampAsync().get(10, TimeUnit.SECONDS);
    assertEquals(received + 2, async);
    assertEquals(async + 1, clock.observeAsync(5).get(10, TimeUnit.SECONDS));
    assertEquals(async + 2, clock.reserveAsync(2).get(10, TimeUnit.SECONDS).first());
  }

  @Test
  void aBadNameIsInvalidArgument() {
    InvalidArgumentException e =
        assertThrows(InvalidArgumentException.class, () -> client.lamportClock("").stamp());
    assertTrue(e.violations().containsKey("clock"), e.violations().toString());
  }
}
