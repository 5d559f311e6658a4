package io.github.seeda88e5317.resilience;

import com.google.protobuf.ByteString;
import io.github.seeda88e5317.resilience.v1.CheckpointIdempotencyRequest;
import io.github.seeda88e5317.resilience.v1.CheckpointIdempotencyResponse;
import java.time.Instant;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;

/** One run of an operation under an idempotency key, as a {@link ResumableOperation} sees it. */
public final class Execution {
  private final ResilienceClient client;
  private final String key;
  private final String leaseId;
  private final int attempt;
  private final String recoveryPoint;
  private final byte[] recoveryData;
  private final int retries;

  Execution(
      ResilienceClient client,
      String key,
      String leaseId,
      int attempt,
      String recoveryPoint,
      byte[] recoveryData,
      int retries) {
    this.client = client;
    this.key = key;
    this.leaseId = leaseId;
    this.attempt = attempt;
    this.recoveryPoint = recoveryPoint;
    this.recoveryData = recoveryData;
    this.retries = retries;
  }

  /** The idempotency key. */
  public String key() {
    return key;
  }

  /**
   * 1 for the first run; more when this run takes over from an executor whose lease expired (it
   * died or was too slow).
   */
  public int attempt() {
    return attempt;
  }

  /**
   * The last checkpoint an earlier attempt recorded (empty when there is none): resume after that
   * phase instead of redoing it.
   */
  public String recoveryPoint() {
    return recoveryPoint;
  }

  /** The data of the last checkpoint (empty when there is none). A copy. */
  public byte[] recoveryData() {
    return recoveryData.clone();
  }

  /**
   * Records that the operation finished the phase {@code recoveryPoint} (a name, 1-512 bytes), with
   * the data the next phases need (at most 64 KiB), and extends the lease by its TTL. If this
   * process dies, the run that takes over sees them.
   *
   * @return the lease's new expiry
   * @throws LeaseLostException another run has taken over: stop
   */
  public Instant checkpoint(String recoveryPoint, byte[] data) {
    Objects.requireNonNull(recoveryPoint, "recoveryPoint");
    Objects.requireNonNull(data, "data");
    CheckpointIdempotencyResponse resp =
        ResilienceClient.retryUnavailable(
            retries,
            () ->
                client
                    .idempotency()
                    .checkpointIdempotency(
                        CheckpointIdempotencyRequest.newBuilder()
                            .setKey(key)
                            .setLeaseId(leaseId)
                            .setRecoveryPoint(recoveryPoint)
                            .setData(ByteString.copyFrom(data))
                            .build()));
    return Protos.instant(resp.getLeaseExpireTime());
  }

  /** {@link #checkpoint} without blocking (UNAVAILABLE is retried the same way). */
  public CompletableFuture<Instant> checkpointAsync(String recoveryPoint, byte[] data) {
    Objects.requireNonNull(recoveryPoint, "recoveryPoint");
    Objects.requireNonNull(data, "data");
    CheckpointIdempotencyRequest req =
        CheckpointIdempotencyRequest.newBuilder()
            .setKey(key)
            .setLeaseId(leaseId)
            .setRecoveryPoint(recoveryPoint)
            .setData(ByteString.copyFrom(data))
            .build();
    return Async.retryUnavailable(
            client.scheduler(),
            Tracing.currentContextExecutor(),
            retries,
            () -> Async.unary(client.idempotencyFuture().checkpointIdempotency(req)))
        .thenApply(r -> Protos.instant(r.getLeaseExpireTime()));
  }

  String leaseId() {
    return leaseId;
  }

  @Override
  public String toString() {
    return "Execution{key="
        + key
        + ", attempt="
        + attempt
        + ", recoveryPoint="
        + recoveryPoint
        + "}";
  }
}
