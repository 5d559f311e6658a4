package example.spring;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;

/**
 * A small shop on the resilience sidecar's Spring Boot starter:
 *
 * <ul>
 *   <li>{@code POST /payments} charges a payment; a client that retries with the same {@code
 *       Idempotency-Key} gets the first response again (the starter's filter), so the payment
 *       provider is called once;
 *   <li>{@code POST /stock/{sku}/reservations?units=N} reserves stock under the distributed lock
 *       {@code stock/<sku>} ({@code @WithLock}), writing with the lock's fencing token;
 *   <li>{@code POST /orders/{id}/shipment} ships an order once ({@code @Idempotent} keyed by the
 *       order id), whoever asks how often;
 *   <li>{@code GET /stats} counts what really ran.
 * </ul>
 *
 * The sidecar's address and the filter's settings are in application.yaml.
 */
@SpringBootApplication
public class ShopApplication {
  public static void main(String[] args) {
    SpringApplication.run(ShopApplication.class, args);
  }
}
