package example;

import io.github.seeda88e5317.resilience.IdempotentResult;
import io.github.seeda88e5317.resilience.LeaseLostException;
import io.github.seeda88e5317.resilience.LockOptions;
import io.github.seeda88e5317.resilience.PublishOptions;
import io.github.seeda88e5317.resilience.PublishResult;
import io.github.seeda88e5317.resilience.ResilienceClient;
import io.github.seeda88e5317.resilience.SidecarException;
import io.github.seeda88e5317.resilience.Subscription;
import io.github.seeda88e5317.resilience.v1.AcquireLockRequest;
import io.github.seeda88e5317.resilience.v1.AcquireLockResponse;
import io.github.seeda88e5317.resilience.v1.NextUlidRequest;
import io.github.seeda88e5317.resilience.v1.ReleaseLockRequest;
import io.grpc.StatusRuntimeException;
import java.io.PrintStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The seed scenario with the Java client, against the sidecar at $SIDECAR_ADDR:
 *
 * <ol>
 *   <li>charge a payment exactly once although the caller retries it three times (idempotency key);
 *   <li>reserve stock under a lock, with the fencing token checked by the stock table, so that a
 *       holder that paused past its lease cannot write after the next holder;
 *   <li>announce the order once although the publish is retried (idempotency key), and ship it
 *       although the first delivery fails (nacked, then redelivered and acked).
 * </ol>
 *
 * Run it with {@code examples/java/run.sh}. It exits with status 1 if a guarantee did not hold.
 */
public final class ExactlyOnceShop {
  private ExactlyOnceShop() {}

  public static void main(String[] args) {
    try (ResilienceClient client = ResilienceClient.create()) {
      boolean ok = run(client, System.out);
      System.out.println(ok ? "OK" : "FAILED");
      if (!ok) {
        System.exit(1);
      }
    }
  }

  /** A payment provider: every call charges the card. This must happen once per order. */
  static final class PaymentProvider {
    final AtomicInteger charges = new AtomicInteger();

    String charge(String order, long cents) {
      return "ch_"
          + charges.incrementAndGet()
          + "_"
          + order.substring(order.length() - 6).toLowerCase();
    }
  }

  /** A stock table whose rows keep the highest fencing token that wrote them (a `fence` column). */
  static final class StockTable {
    private final Map<String, long[]> rows = new HashMap<>(); // sku -> {available, fence}

    synchronized void put(String sku, long available) {
      rows.put(sku, new long[] {available, 0});
    }

    /** Reserves qty units, unless a later lock holder already wrote this row. */
    synchronized boolean reserve(String sku, long qty, long fencingToken) {
      long[] row = rows.get(sku);
      if (fencingToken <= row[1]) {
        return false; // a stale holder: refused
      }
      row[1] = fencingToken;
      row[0] -= qty;
      return true;
    }

    synchronized long available(String sku) {
      return rows.get(sku)[0];
    }
  }

  static boolean run(ResilienceClient client, PrintStream out) {
    boolean ok = true;
    // A run-unique order id from the sidecar's ULIDs, so that a second run charges again.
    String order =
        client.clocks().nextUlid(NextUlidRequest.getDefaultInstance()).getUlids(0).getValue();

    // 1. Charge exactly once under retries.
    PaymentProvider provider = new PaymentProvider();
    String body = "{\"order\":\"" + order + "\",\"amount_cents\":4200}";
    String fingerprint = ResilienceClient.fingerprint(body);
    List<IdempotentResult> responses = new ArrayList<>();
    for (int attempt = 1; attempt <= 3; attempt++) { // the caller timed out and retried twice
      IdempotentResult r =
          client.idempotent(
              "charge/" + order,
              fingerprint,
              () -> {
                String chargeId = provider.charge(order, 4200);
                return IdempotentResult.ofString(
                    "{\"charge\":\"" + chargeId + "\"}", Map.of("status", "201"));
              });
      responses.add(r);
      out.printf(
          "charge attempt %d: status %s %s%n",
          attempt, r.metadata().get("status"), r.dataAsString());
    }
    boolean sameResult = responses.stream().allMatch(responses.get(0)::equals);
    out.printf(
        "charges made: %d, same response every time: %b%n", provider.charges.get(), sameResult);
    ok &= provider.charges.get() == 1 && sameResult;

    // 2. Reserve stock under a lock with a fencing check.
    StockTable stock = new StockTable();
    String sku = "sku-" + order;
    stock.put(sku, 10);
    String lockKey = "stock/" + sku;

    // Worker A takes the lock with a short lease, then pauses (a GC pause, a slow disk) past it.
    AcquireLockResponse a =
        client
            .locks()
            .acquireLock(
                AcquireLockRequest.newBuilder()
                    .setKey(lockKey)
                    .setOwner("worker-a")
                    .setTtl(com.google.protobuf.Duration.newBuilder().setNanos(200_000_000))
                    .build());
    long tokenA = a.getLease().getFencingToken();
    out.printf("worker-a holds %s with fencing token %d, then pauses%n", lockKey, tokenA);
    sleep(Duration.ofMillis(400));

    // Worker B gets the lock once A's lease expired, and reserves 2 units.
    boolean reservedB =
        client.withLock(
            lockKey,
            LockOptions.defaults().owner("worker-b").waitTimeout(Duration.ofSeconds(5)),
            (lease, cancelled) -> {
              out.printf(
                  "worker-b holds %s with fencing token %d%n", lockKey, lease.fencingToken());
              return stock.reserve(sku, 2, lease.fencingToken());
            });
    out.printf("worker-b reserved 2: %b%n", reservedB);

    // Worker A wakes up and writes with its old token: the stock table refuses it.
    boolean reservedA = stock.reserve(sku, 3, tokenA);
    out.printf("worker-a (stale, token %d) reserved 3: %b%n", tokenA, reservedA);
    // ... and its release tells it the lease was lost, as a typed exception.
    try {
      client
          .locks()
          .releaseLock(
              ReleaseLockRequest.newBuilder()
                  .setKey(lockKey)
                  .setLeaseId(a.getLease().getLeaseId())
                  .build());
      out.println("worker-a release: ok (unexpected)");
      ok = false;
    } catch (StatusRuntimeException e) {
      SidecarException se = SidecarException.from(e);
      out.printf("worker-a release: %s (%s)%n", se.getClass().getSimpleName(), se.reason());
      ok &= se instanceof LeaseLostException;
    }
    out.printf("stock of %s: %d%n", sku, stock.available(sku));
    ok &= a.getAcquired() && reservedB && !reservedA && stock.available(sku) == 8;
    ok &= announceAndShip(client, out, order);
    return ok;
  }

  /** The order is announced once (a retried publish appends nothing) and shipped once. */
  static boolean announceAndShip(ResilienceClient client, PrintStream out, String order) {
    String topic = "orders.placed." + order.toLowerCase();
    PublishOptions opts = PublishOptions.defaults().key(order).idempotencyKey(order + "/placed");
    PublishResult first = client.publish(topic, "{\"order\":\"" + order + "\"}", opts);
    PublishResult retry = client.publish(topic, "{\"order\":\"" + order + "\"}", opts);
    boolean once = retry.duplicate() && retry.eventId().equals(first.eventId());
    out.printf("order announced once: %b%n", once);

    List<String> shipped = new ArrayList<>();
    try (Subscription sub = client.subscribe(topic, "shipping", "shipping-1")) {
      Thread bound =
          new Thread(
              () -> {
                sleep(Duration.ofSeconds(15));
                sub.close();
              });
      bound.setDaemon(true); // never hang the scenario
      bound.start();
      sub.run(
          event -> {
            if (event.getDeliveryCount() == 1) {
              out.println("ship: courier unavailable on delivery 1, nacked");
              throw new IllegalStateException("courier unavailable"); // delivered again
            }
            shipped.add(event.getKey());
            out.printf("ship: shipped on delivery %d, acked%n", event.getDeliveryCount());
            sub.close(); // a real consumer runs until shutdown
          });
    }
    return once && shipped.equals(List.of(order));
  }

  private static void sleep(Duration d) {
    try {
      Thread.sleep(d.toMillis());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException(e);
    }
  }
}
