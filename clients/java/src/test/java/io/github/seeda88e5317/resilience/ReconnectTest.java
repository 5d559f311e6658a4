package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.seeda88e5317.resilience.v1.NextUlidRequest;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * After the sidecar restarts, the client's next call succeeds within about a second: the client
 * caps gRPC's reconnect backoff (which otherwise grows from 1 s by 1.6 per failed attempt), and a
 * call made while it reconnects waits for the connection (connectWait).
 */
@ExtendWith(SidecarExtension.class)
@Timeout(90)
class ReconnectTest {
  /**
   * Accepts connections on the sidecar's port while it is down and closes them at once: each is a
   * failed connect attempt of the client, and its time is recorded.
   */
  static final class RefusingPort implements AutoCloseable {
    final ServerSocket socket;
    final List<Long> attempts = new CopyOnWriteArrayList<>();
    final Thread thread;

    RefusingPort(int port) throws IOException {
      socket = new ServerSocket();
      socket.setReuseAddress(true);
      socket.bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), port));
      thread =
          new Thread(
              () -> {
                while (!socket.isClosed()) {
                  try (Socket s = socket.accept()) {
                    attempts.add(System.nanoTime());
                  } catch (IOException e) {
                    return; // closed
                  }
                }
              });
      thread.setDaemon(true);
      thread.start();
    }

    @Override
    public void close() {
      try {
        socket.close();
        thread.join(5000);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }

  @Test
  @Tag("scenario:reconnect-after-restart")
  void theNextCallAfterARestartSucceedsWithinASecond(SidecarExtension.Env env) throws Exception {
    int port = TestProcesses.freePort();
    String address = "127.0.0.1:" + port;
    TestProcesses.Sidecar sidecar =
        TestProcesses.Sidecar.start(TestProcesses.workDir("restart-1"), env.redis().url(), null, address);
    try (ResilienceClient client =
        ResilienceClient.builder().environment(Map.of()).address(address).build()) {
      client.clocks().nextUlid(NextUlidRequest.getDefaultInstance()); // connected
      sidecar.process.destroyForcibly();
      sidecar.process.onExit().get(10, TimeUnit.SECONDS);

      // The sidecar is away: the client's connect attempts fail, and gRPC's backoff grows.
      long downAt = System.nanoTime();
      try (RefusingPort away = new RefusingPort(port)) {
        // real time: at least 8 s and 5 failed attempts, so that gRPC's own next backoff would be
        // 1.6^4 x (1 +/- 0.2) >= 5.2 s, longer than the 3 s the call below may take
        while (System.nanoTime() - downAt < TimeUnit.SECONDS.toNanos(8)
            || away.attempts.size() < 5) {
          assertTrue(System.nanoTime() - downAt < TimeUnit.SECONDS.toNanos(40), "too few attempts: " + away.attempts.size());
          // Keep asking to connect, as calls would: the channel may still have been READY at the
          // first request, and it goes IDLE, not connecting, once it notices the sidecar is gone.
          client.channel().getState(true);
          TestProcesses.sleep(20);
        }
        // Restart right after a failed attempt: the worst moment for a growing backoff.
        int seen = away.attempts.size();
        while (away.attempts.size() == seen) {
          TestProcesses.sleep(5);
        }
        System.out.printf(
            "reconnect-after-restart: %d failed connect attempts in %d ms while the sidecar was away%n",
            away.attempts.size(), (System.nanoTime() - downAt) / 1_000_000);
      }
      long startedAt = System.nanoTime(); // the port is free again
      // When the restarted sidecar starts listening (for the figure printed below).
      AtomicLong listeningAt = new AtomicLong();
      Thread probe =
          new Thread(
              () -> {
                while (listeningAt.get() == 0 && System.nanoTime() - startedAt < 30_000_000_000L) {
                  try (Socket s = new Socket(InetAddress.getLoopbackAddress(), port)) {
                    listeningAt.set(System.nanoTime());
                  } catch (IOException e) {
                    TestProcesses.sleep(2);
                  }
                }
              });
      probe.setDaemon(true);
      probe.start();
      sidecar =
          TestProcesses.Sidecar.start(TestProcesses.workDir("restart-2"), env.redis().url(), null, address);
      long restartedAt = System.nanoTime(); // SERVING

      // One plain call with a 3 s deadline (it may wait for the connection: connectWait).
      var r =
          client
              .clocks()
              .withDeadlineAfter(3, TimeUnit.SECONDS)
              .nextUlid(NextUlidRequest.newBuilder().setCount(1).build());
      long took = System.nanoTime() - restartedAt;
      assertEquals(1, r.getUlidsCount());
      long done = System.nanoTime();
      probe.join(5000);
      System.out.printf(
          "reconnect-after-restart: the call succeeded %d ms after the restarted sidecar was"
              + " serving, %d ms after it began listening (%d ms after it was started)%n",
          took / 1_000_000, (done - listeningAt.get()) / 1_000_000, (done - startedAt) / 1_000_000);
    } finally {
      sidecar.close();
    }
  }

  @Test
  void aCallMadeWhileTheSidecarRestartsWaitsForIt(SidecarExtension.Env env) throws Exception {
    int port = TestProcesses.freePort();
    String address = "127.0.0.1:" + port;
    TestProcesses.Sidecar sidecar =
        TestProcesses.Sidecar.start(TestProcesses.workDir("restart-3"), env.redis().url(), null, address);
    try (ResilienceClient client =
        ResilienceClient.builder()
            .environment(Map.of())
            .address(address)
            .connectWait(java.time.Duration.ofSeconds(8))
            .build()) {
      client.clocks().nextUlid(NextUlidRequest.getDefaultInstance()); // connected
      sidecar.process.destroyForcibly();
      sidecar.process.onExit().get(10, TimeUnit.SECONDS);

      // Made while nothing listens: it waits for the connection instead of failing at once.
      var call =
          java.util.concurrent.CompletableFuture.supplyAsync(
              () ->
                  client
                      .clocks()
                      .withDeadlineAfter(20, TimeUnit.SECONDS)
                      .nextUlid(NextUlidRequest.getDefaultInstance()));
      TestProcesses.sleep(300); // real time: the call is waiting while the sidecar is away
      assertTrue(!call.isDone(), "the call did not wait: " + call);
      sidecar =
          TestProcesses.Sidecar.start(TestProcesses.workDir("restart-4"), env.redis().url(), null, address);
      assertEquals(1, call.get(15, TimeUnit.SECONDS).getUlidsCount());
    } finally {
      sidecar.close();
    }
  }
}
