package example.spring;

import java.util.Map;
import org.springframework.http.HttpStatus;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RequestBody;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.ResponseStatus;
import org.springframework.web.bind.annotation.RestController;

/** The shop's HTTP API. */
@RestController
public class ShopController {

  /** A payment to make. */
  public record PaymentRequest(String orderId, long cents) {}

  private final Payments payments;
  private final Stock stock;
  private final Shipping shipping;

  public ShopController(Payments payments, Stock stock, Shipping shipping) {
    this.payments = payments;
    this.stock = stock;
    this.shipping = shipping;
  }

  /** Guarded by the Idempotency-Key filter: send the header and retry freely. */
  @PostMapping("/payments")
  @ResponseStatus(HttpStatus.CREATED)
  public Payments.Payment pay(@RequestBody PaymentRequest request) {
    return payments.charge(request.orderId(), request.cents());
  }

  @PostMapping("/stock/{sku}/reservations")
  public Stock.Reservation reserve(@PathVariable String sku, @RequestParam int units) {
    return stock.reserve(sku, units);
  }

  @PostMapping("/orders/{orderId}/shipment")
  public Shipping.Shipment ship(@PathVariable String orderId) {
    return shipping.ship(orderId);
  }

  @GetMapping("/stats")
  public Map<String, Object> stats() {
    return Map.of(
        "charges", payments.charges(),
        "shipments", shipping.shipments(),
        "stock", stock.levels());
  }
}
