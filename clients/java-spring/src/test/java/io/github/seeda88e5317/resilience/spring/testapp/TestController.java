package io.github.seeda88e5317.resilience.spring.testapp;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.springframework.http.MediaType;
import org.springframework.http.ResponseEntity;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RequestBody;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.RestController;

/** Endpoints that count their runs, for the filter tests. */
@RestController
public class TestController {

  public final AtomicInteger orders = new AtomicInteger();
  public final AtomicInteger slowRuns = new AtomicInteger();
  public final AtomicInteger failRuns = new AtomicInteger();
  public final AtomicInteger throwRuns = new AtomicInteger();
  public final AtomicInteger reads = new AtomicInteger();
  public volatile CountDownLatch slowStarted = new CountDownLatch(1);
  public volatile CountDownLatch slowRelease = new CountDownLatch(1);

  @PostMapping("/orders")
  public ResponseEntity<String> order(
      @RequestBody(required = false) String body, @RequestParam(defaultValue = "") String note) {
    int n = orders.incrementAndGet();
    return ResponseEntity.status(201)
        .contentType(MediaType.APPLICATION_JSON)
        .header("X-Order", Integer.toString(n))
        .header("Set-Cookie", "session=" + n)
        .body("{\"order\":" + n + ",\"body\":\"" + body + "\",\"note\":\"" + note + "\"}");
  }

  /** A form post: the parameters must reach the handler although the filter read the body. */
  @PostMapping(path = "/form", consumes = MediaType.APPLICATION_FORM_URLENCODED_VALUE)
  public String form(@RequestParam String item, @RequestParam int qty) {
    return item + "x" + qty;
  }

  @PostMapping("/slow")
  public String slow() throws InterruptedException {
    slowRuns.incrementAndGet();
    slowStarted.countDown();
    if (!slowRelease.await(30, TimeUnit.SECONDS)) {
      throw new IllegalStateException("the test never released /slow");
    }
    return "done";
  }

  /** 500 on the first run, 201 afterwards. */
  @PostMapping("/fail")
  public ResponseEntity<String> fail() {
    int n = failRuns.incrementAndGet();
    return n == 1
        ? ResponseEntity.status(500).body("boom " + n)
        : ResponseEntity.status(201).body("ok " + n);
  }

  /** Throws on the first run, 200 afterwards. */
  @PostMapping("/throw")
  public String throwing() {
    int n = throwRuns.incrementAndGet();
    if (n == 1) {
      throw new IllegalStateException("first run fails");
    }
    return "ok " + n;
  }

  public final AtomicInteger asyncRuns = new AtomicInteger();

  /** An asynchronous handler: the response is written in an async dispatch. */
  @PostMapping("/async")
  public CompletableFuture<ResponseEntity<String>> async(@RequestBody String body) {
    return CompletableFuture.supplyAsync(
        () ->
            ResponseEntity.status(202)
                .header("X-Async", "yes")
                .body("async " + asyncRuns.incrementAndGet() + " " + body));
  }

  @GetMapping("/orders")
  public String read() {
    return "read " + reads.incrementAndGet();
  }
}
