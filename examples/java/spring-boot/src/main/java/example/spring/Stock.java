package example.spring;

import io.github.seeda88e5317.resilience.spring.CurrentLock;
import io.github.seeda88e5317.resilience.spring.WithLock;
import java.util.Map;
import java.util.TreeMap;
import org.springframework.stereotype.Service;

/**
 * Stock levels, changed only under the lock {@code stock/<sku>}. The table remembers the highest
 * fencing token that wrote each row and refuses older ones, as a database would with a {@code
 * WHERE fencing_token < ?} guard: a writer whose lease was lost cannot overwrite a newer one.
 */
@Service
public class Stock {

  /** A reservation made, with the fencing token it was written with. */
  public record Reservation(String sku, int units, int left, long fencingToken) {}

  private final Map<String, Integer> levels = new TreeMap<>();
  private final Map<String, Long> lastToken = new TreeMap<>();

  @WithLock(key = "'stock/' + #sku", ttl = "10s", waitTimeout = "5s")
  public Reservation reserve(String sku, int units) {
    long token = CurrentLock.lease().orElseThrow().fencingToken();
    synchronized (this) {
      if (token <= lastToken.getOrDefault(sku, 0L)) {
        throw new IllegalStateException("stale fencing token " + token + " for " + sku);
      }
      int left = levels.getOrDefault(sku, 10);
      if (units < 1 || units > left) {
        throw new IllegalArgumentException("cannot reserve " + units + " of " + left);
      }
      levels.put(sku, left - units);
      lastToken.put(sku, token);
      return new Reservation(sku, units, left - units, token);
    }
  }

  public synchronized Map<String, Integer> levels() {
    return Map.copyOf(levels);
  }
}
