package example.spring;

import java.util.concurrent.atomic.AtomicInteger;
import org.springframework.stereotype.Service;

/** A stand-in for a payment provider: each call is a real charge. */
@Service
public class Payments {

  /** A charge made. */
  public record Payment(String paymentId, String orderId, long cents) {}

  private final AtomicInteger charges = new AtomicInteger();

  public Payment charge(String orderId, long cents) {
    int n = charges.incrementAndGet();
    return new Payment("pay_" + n, orderId, cents);
  }

  public int charges() {
    return charges.get();
  }
}
