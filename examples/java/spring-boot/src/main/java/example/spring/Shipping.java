package example.spring;

import io.github.seeda88e5317.resilience.spring.Idempotent;
import java.util.concurrent.atomic.AtomicInteger;
import org.springframework.stereotype.Service;

/** Ships each order once, however often (and through whichever instance) it is asked. */
@Service
public class Shipping {

  /** A shipment made; a duplicate call gets the same one back. */
  public record Shipment(String shipmentId, String orderId) {}

  private final AtomicInteger shipments = new AtomicInteger();

  @Idempotent(key = "#orderId", name = "ship", retention = "${shop.shipment-retention:24h}")
  public Shipment ship(String orderId) {
    int n = shipments.incrementAndGet();
    return new Shipment("ship_" + n, orderId);
  }

  public int shipments() {
    return shipments.get();
  }
}
