package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.Event;
import io.github.seeda88e5317.resilience.v1.StartFrom;
import io.grpc.Status;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** publish, subscribe, ack, nack and outboxStatus against the real sidecar. */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class EventsTest {
  ResilienceClient client;
  ScheduledExecutorService timers;

  @BeforeEach
  void connect(SidecarExtension.Env env) {
    client = env.client();
    timers = Executors.newSingleThreadScheduledExecutor();
  }

  @AfterEach
  void close() {
    timers.shutdownNow();
    client.close();
  }

  static String uniqueTopic() {
    return "java-test." + UUID.randomUUID().toString().substring(0, 12);
  }

  static String text(Event e) {
    return e.getPayload().toString(StandardCharsets.UTF_8);
  }

  void closeAfter(Subscription sub, long millis) {
    timers.schedule(sub::close, millis, TimeUnit.MILLISECONDS);
  }

  @Test
  void sameIdempotencyKeyAppendsOnce() {
    String topic = uniqueTopic();
    PublishOptions opts = PublishOptions.defaults().key("order-1").idempotencyKey("k1");
    PublishResult a = client.publish(topic, "one", opts);
    PublishResult b = client.publish(topic, "one", opts);
    assertFalse(a.duplicate());
    assertTrue(b.duplicate());
    assertEquals(a.eventId(), b.eventId());
    assertTrue(a.eventId().matches("\\d+-\\d+"), a.eventId());
    PublishResult c = client.publish(topic, "two".getBytes(StandardCharsets.UTF_8));
    assertFalse(c.duplicate());
    assertNotEquals(a.eventId(), c.eventId());

    List<String> got = new ArrayList<>();
    try (Subscription sub = client.subscribe(topic, "g", "c1")) {
      closeAfter(sub, 10_000);
      sub.run(
          e -> {
            got.add(e.getEventId() + " " + e.getKey() + " " + text(e));
            if (got.size() == 2) {
              closeAfter(sub, 500); // time for a third, which must not come
            }
          });
    }
    assertEquals(List.of(a.eventId() + " order-1 one", c.eventId() + "  two"), got);
  }

  @Test
  @Tag("scenario:events-redelivery")
  void inOrderNackRedeliversAckStops() {
    String topic = uniqueTopic();
    for (String p : List.of("e1", "e2", "e3")) {
      client.publish(topic, p, PublishOptions.defaults().header("content-type", "text/plain"));
    }
    List<String> got = new CopyOnWriteArrayList<>();
    try (Subscription sub =
        client.subscribe(
            topic,
            "workers",
            "w1",
            SubscribeOptions.defaults().visibilityTimeout(Duration.ofMillis(300)).maxInFlight(4))) {
      assertTrue(sub.groupCreated());
      closeAfter(sub, 15_000);
      sub.run(
          e -> {
            got.add(text(e) + "#" + e.getDeliveryCount());
            assertEquals(topic, e.getTopic());
            assertEquals("text/plain", e.getHeadersOrThrow("content-type"));
            assertTrue(e.getPublishedAt().getSeconds() > 0);
            if (got.size() == 4) {
              closeAfter(sub, 1500); // past the visibility timeout: nothing more may come
            }
            if (text(e).equals("e2") && e.getDeliveryCount() == 1) {
              throw new IllegalStateException("first attempt fails");
            }
          });
    }
    assertEquals(List.of("e1#1", "e2#1", "e3#1", "e2#2"), got);
  }

  @Test
  void retryAfterDelaysTheRedelivery() {
    String topic = uniqueTopic();
    client.publish(topic, "x", PublishOptions.defaults());
    List<Long> at = new ArrayList<>();
    try (Subscription sub = client.subscribe(topic, "g", "c")) {
      closeAfter(sub, 10_000);
      sub.run(
          e -> {
            at.add(System.nanoTime());
            if (e.getDeliveryCount() == 1) {
              throw new RetryAfterException(Duration.ofMillis(700));
            }
            sub.close();
          });
    }
    assertEquals(2, at.size());
    long ms = (at.get(1) - at.get(0)) / 1_000_000;
    assertTrue(ms >= 600, "redelivered after " + ms + " ms, want about 700");
  }

  @Test
  void invalidTopicIsInvalidArgumentNamingTheField() {
    InvalidArgumentException e =
        assertThrows(
            InvalidArgumentException.class,
            () -> client.publish("bad topic/with spaces", new byte[] {1}));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    assertTrue(e.violations().containsKey("topic"), e.violations().toString());
    InvalidArgumentException s =
        assertThrows(
            InvalidArgumentException.class, () -> client.subscribe(".starts-with-dot", "g", "c"));
    assertTrue(s.violations().containsKey("topic"), s.violations().toString());
  }

  @Test
  void closeEndsTheSubscriptionCleanly() throws Exception {
    String topic = uniqueTopic();
    client.publish(topic, "slow", PublishOptions.defaults());

    // Closed while the handler runs: run() returns, and the event is settled (acked here).
    CountDownLatch handling = new CountDownLatch(1);
    CountDownLatch release = new CountDownLatch(1);
    Subscription sub = client.subscribe(topic, "g", "c1");
    CompletableFuture<Void> done =
        sub.start(
            e -> {
              handling.countDown();
              release.await();
            });
    assertTrue(handling.await(10, TimeUnit.SECONDS));
    sub.close();
    release.countDown();
    done.get(10, TimeUnit.SECONDS); // completes normally

    // Closed while waiting for events: the iteration ends without an exception.
    try (Subscription idle = client.subscribe(topic, "g", "c2")) {
      Iterator<Event> it = idle.iterator();
      closeAfter(idle, 300);
      long start = System.nanoTime();
      assertFalse(it.hasNext());
      assertTrue(System.nanoTime() - start < TimeUnit.SECONDS.toNanos(5));
      assertTrue(idle.isClosed());
    }
  }

  @Test
  void unsettledEventComesBackAfterTheVisibilityTimeout() {
    String topic = uniqueTopic();
    client.publish(topic, "x", PublishOptions.defaults());
    String id;
    try (Subscription sub =
        client.subscribe(
            topic, "g", "c1", SubscribeOptions.defaults().visibilityTimeout(Duration.ofMillis(500)))) {
      Event e = sub.iterator().next();
      assertEquals(1, e.getDeliveryCount());
      id = e.getEventId();
    } // closed without settling it
    // It comes back after c1's 500 ms visibility timeout (it belongs to the delivery), not after
    // c2's default of 30 s.
    try (Subscription sub = client.subscribe(topic, "g", "c2", SubscribeOptions.defaults())) {
      Event e = sub.iterator().next();
      assertEquals(id, e.getEventId());
      assertEquals(2, e.getDeliveryCount());
      assertTrue(sub.ack(e));
      assertFalse(sub.ack(e), "a second ack finds nothing pending");
      assertFalse(sub.nack(e, Duration.ofMillis(100)));
    }
  }

  @Test
  void startFromLatestSkipsEarlierEvents() {
    String topic = uniqueTopic();
    client.publish(topic, "old", PublishOptions.defaults());
    try (Subscription sub =
        client.subscribe(
            topic, "late", "c", SubscribeOptions.defaults().startFrom(StartFrom.START_FROM_LATEST))) {
      client.publish(topic, "new", PublishOptions.defaults());
      Event e = sub.iterator().next();
      assertEquals("new", text(e));
      sub.ack(e);
    }
  }

  @Test
  void undeclaredTopicIsTopicUnknown(SidecarExtension.Env env) throws Exception {
    Path dir = TestProcesses.workDir("events-topics");
    Path config = dir.resolve("sidecar.yaml");
    Files.writeString(config, "events:\n  topics: [orders.placed]\n");
    try (TestProcesses.Sidecar sc =
            TestProcesses.Sidecar.start(
                dir, env.redis().url(), null, null, List.of("--config", config.toString()));
        ResilienceClient c =
            ResilienceClient.builder().environment(Map.of()).address(sc.address).build()) {
      assertFalse(c.publish("orders.placed", "x", PublishOptions.defaults()).duplicate());
      TopicUnknownException e =
          assertThrows(
              TopicUnknownException.class,
              () -> c.publish("orders.other", "x", PublishOptions.defaults()));
      assertEquals(Status.Code.NOT_FOUND, e.code());
      assertEquals(SidecarException.TOPIC_UNKNOWN, e.reason());
      assertThrows(TopicUnknownException.class, () -> c.subscribe("orders.other", "g", "c"));
    }
  }

  @Test
  void aStoppingSidecarEndsTheIterationWithShuttingDown(SidecarExtension.Env env) {
    Path dir = TestProcesses.workDir("events-shutdown");
    try (TestProcesses.Sidecar sc = TestProcesses.Sidecar.start(dir, env.redis().url(), null, null);
        ResilienceClient c =
            ResilienceClient.builder().environment(Map.of()).address(sc.address).build();
        Subscription sub = c.subscribe(uniqueTopic(), "g", "c")) {
      timers.schedule(() -> sc.process.destroy(), 300, TimeUnit.MILLISECONDS); // SIGTERM
      assertThrows(ShuttingDownException.class, () -> sub.iterator().hasNext());
    }
  }

  @Test
  void outboxStatusWithoutAnOutbox() {
    var st = client.outboxStatus();
    assertNotNull(st);
    assertFalse(st.getEnabled());
  }
}
